use safhire::params::ParameterSet;
use safhire::rlwe::Context;
#[test]
#[ignore]
fn tmp_layouts() {
    let ctx = Context::new(ParameterSet::shipped("b16").unwrap());
    for (name, model) in [
        (
            "digits",
            safhire::model::Model::from_json(include_str!("../models/digits-cnn.json")).unwrap(),
        ),
        ("r20", safhire::model::zoo::resnet20(1)),
        ("r18", safhire::model::zoo::resnet18(1)),
    ] {
        let c = safhire::engine::compile(&ctx, &model).unwrap();
        for (i, s) in c.stages().iter().enumerate() {
            println!("{name} stage {i}: in_ct {} out_ct {} dil {} inter {} out_len {} reads_upload {} shortcut {}", s.input_ciphertexts(), s.output_ciphertexts(), s.dilation(), s.interleave(), s.output_len(), s.reads_upload_directly(), s.has_shortcut());
        }
    }
}
