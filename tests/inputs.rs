//! MODEL-11: input and label files, JSON and `.npy`, checked against the
//! model before anything is encrypted; errors blame the file and never
//! echo its content.

use proptest::prelude::*;
use safhire::model::{InputSpec, InputsError, Layer, Model, Shape, TestSet};

/// A version-1.0 `.npy` file of `dtype` (e.g. `<i4`) and `shape`.
fn npy(dtype: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that magic + version + length + header is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn model() -> Model {
    Model::new(
        "m",
        InputSpec {
            shape: Shape::new(1, 2, 2),
            min: 0,
            max: 15,
        },
        vec![
            Layer::Flatten,
            Layer::Linear {
                out_features: 1,
                weights: vec![1, 1, 1, 1],
                bias: vec![0],
            },
        ],
    )
    .unwrap()
}

// MODEL-11
#[test]
fn json_inputs_with_and_without_labels() {
    let set = TestSet::from_json(
        "a.json",
        r#"{"inputs": [[1, 2, 3, 4], [0, 0, 0, 15]], "labels": [1, 0]}"#,
    )
    .unwrap();
    assert_eq!(set.inputs, [vec![1, 2, 3, 4], vec![0, 0, 0, 15]]);
    assert_eq!(set.labels, Some(vec![1, 0]));
    assert_eq!(set.check_against("a.json", &model()), Ok(()));
    let bare = TestSet::from_json("b.json", "[[1, 2, 3, 4]]").unwrap();
    assert_eq!(bare.labels, None);
    // Label count, unknown field, floats, empty: refused naming the file.
    for bad in [
        r#"{"inputs": [[1, 2, 3, 4]], "labels": [1, 2]}"#,
        r#"{"inputs": [[1, 2, 3, 4]], "extra": 1}"#,
        r#"{"inputs": [[1.5, 2, 3, 4]]}"#,
        r#"{"inputs": []}"#,
        "[[1, 2, 3, 4]] trailing",
    ] {
        let err = TestSet::from_json("bad.json", bad).unwrap_err();
        assert!(err.to_string().starts_with("bad.json:"), "{err}");
    }
}

// MODEL-11
#[test]
fn inputs_are_checked_against_the_model_without_echoing_values() {
    let m = model();
    let short = TestSet::from_json("s.json", "[[1, 2, 3]]").unwrap();
    assert!(matches!(
        short.check_against("s.json", &m),
        Err(InputsError::Length {
            index: 0,
            expected: 4,
            got: 3,
            ..
        })
    ));
    let out = TestSet::from_json("r.json", "[[1, 2, 3, 4], [1, 2, 987654, 4]]").unwrap();
    let err = out.check_against("r.json", &m).unwrap_err();
    assert!(
        matches!(
            err,
            InputsError::Range {
                index: 1,
                min: 0,
                max: 15,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("987654"), "{err}");
}

// MODEL-11
#[test]
fn npy_inputs_of_every_integer_width() {
    let values: [i64; 8] = [0, 1, 2, 3, 15, 14, 13, 12];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("|u1", values.iter().map(|&v| v as u8).collect()),
        ("|i1", values.iter().map(|&v| v as u8).collect()),
        (
            "<i2",
            values
                .iter()
                .flat_map(|&v| (v as i16).to_le_bytes())
                .collect(),
        ),
        (
            "<u4",
            values
                .iter()
                .flat_map(|&v| (v as u32).to_le_bytes())
                .collect(),
        ),
        (
            "<i8",
            values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        ),
    ];
    for (dtype, data) in cases {
        // [2, 1, 2, 2]: two inputs of shape [1, 2, 2].
        let set = TestSet::from_npy("x.npy", &npy(dtype, &[2, 1, 2, 2], &data)).unwrap();
        assert_eq!(
            set.inputs,
            [values[..4].to_vec(), values[4..].to_vec()],
            "{dtype}"
        );
        assert_eq!(set.check_against("x.npy", &model()), Ok(()));
    }
    // Floats are refused: quantise first.
    let floats: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let err = TestSet::from_npy("f.npy", &npy("<f4", &[2, 4], &floats)).unwrap_err();
    assert!(err.to_string().contains("integers"), "{err}");
    // Truncated data and garbage are refused, never a panic.
    let good = npy(
        "<i8",
        &[2, 4],
        &values
            .iter()
            .flat_map(|&v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    for cut in [0, 5, 20, good.len() - 1] {
        assert!(
            TestSet::from_npy("t.npy", &good[..cut]).is_err(),
            "cut {cut}"
        );
    }
}

proptest! {
    // MODEL-11: arbitrary bytes never panic either parser.
    #[test]
    fn arbitrary_bytes_are_refused_or_parsed(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = TestSet::from_npy("p.npy", &bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = TestSet::from_json("p.json", text);
        }
    }
}

// MODEL-11: a header claiming more data than the file holds is refused
// before anything is allocated for it.
#[test]
fn npy_shape_larger_than_the_file_is_refused() {
    let err = TestSet::from_npy("h.npy", &npy("<i8", &[1 << 40, 1 << 20], &[0; 64])).unwrap_err();
    assert!(err.to_string().contains("claims more data"), "{err}");
}
