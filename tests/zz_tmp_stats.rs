use safhire::params::ParameterSet;
use safhire::rlwe::Context;
#[test]
fn stats() {
    for (name, model) in [
        (
            "digits",
            safhire::model::Model::from_json(
                &std::fs::read_to_string("models/digits-cnn.json").unwrap(),
            )
            .ok(),
        ),
        ("resnet20", Some(safhire::model::zoo::resnet20(1))),
    ] {
        let Some(model) = model else {
            println!("skip {name}");
            continue;
        };
        let ctx = Context::new(ParameterSet::shipped("b16").unwrap());
        let c = safhire::engine::compile(&ctx, &model).unwrap();
        for (i, s) in c.stages().iter().enumerate() {
            println!("{name} stage {i}: in_len {} in_cts {} out_len {} out_cts {} dil {} inter {} direct {} conv {:?}", s.input_len(), s.input_ciphertexts(), s.output_len(), s.output_ciphertexts(), s.dilation(), s.interleave(), s.reads_upload_directly(), s.conv_shape().map(|c| format!("{c:?}")));
        }
    }
}
