//! Any bytes as a GGUF file: parsing, every tensor's dequantization and ternary view must
//! return a value or an error, never panic or read out of bounds.
#![no_main]

use bitnet_dequant::gguf::GgufFile;
use bitnet_dequant::io::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf".into(), Bytes::Owned(data.to_vec())) else {
        return;
    };
    for info in file.tensors().to_vec() {
        let mut out = vec![0f32; info.numel()];
        let serial = file
            .dequantize_into(&info.name, &mut out, false)
            .map(|()| out.clone());
        let parallel = file
            .dequantize_into(&info.name, &mut out, true)
            .map(|()| out);
        if let (Ok(a), Ok(b)) = (&serial, &parallel) {
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        assert_eq!(serial.is_ok(), parallel.is_ok());
        let _ = file.ternary(&info.name);
    }
});
