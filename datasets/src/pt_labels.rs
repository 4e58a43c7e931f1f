//! Labels saved with `torch.save(tensor)` (a 1-D int64 tensor), read without libtorch and without
//! executing pickle code (through `models::torch_save`, the restricted reader that also reads
//! PyTorch checkpoints), and written so that `torch.load(weights_only=True)` reads them.

use std::path::Path;

use models::torch_save::{Archive, StorageDtype, Value};

use crate::error::DataError;

/// Parses the bytes of a `torch.save` zip archive holding one 1-D int64 tensor.
pub fn parse_label_tensor(bytes: &[u8]) -> Result<Vec<i64>, String> {
    let mut archive =
        Archive::open(std::io::Cursor::new(bytes))?.with_storage_limit(MAX_STORAGE_BYTES);
    let Value::Tensor(t) = &archive.root else {
        return Err(format!(
            "the pickle holds a {}, not a tensor",
            archive.root.kind()
        ));
    };
    let t = t.clone();
    if t.dtype != StorageDtype::I64 {
        return Err(format!("labels must be int64, found {}", t.dtype.name()));
    }
    if t.shape.len() != 1 {
        return Err(format!("expected a 1-D tensor, found shape {:?}", t.shape));
    }
    Ok(archive.tensor(&t)?.to_i64())
}

/// A deflate bomb stops at 256 MiB (33M labels), whatever the archive claims.
const MAX_STORAGE_BYTES: u64 = 256 << 20;

/// The bytes `torch.save(torch.tensor(labels, dtype=torch.int64))` writes (protocol 2 pickle,
/// stored zip entries with 64-byte aligned data, as torch does), so `torch.load` reads them with
/// `weights_only=True`. Written here for the same reason as the reader: no crate writes it.
pub fn label_tensor_bytes(labels: &[i64]) -> Vec<u8> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    let int = |code: &mut Vec<u8>, v: usize| match v {
        0..=0xff => code.extend([b'K', v as u8]),
        0x100..=0xffff => {
            code.push(b'M');
            code.extend((v as u16).to_le_bytes());
        }
        _ if v <= i32::MAX as usize => {
            code.push(b'J');
            code.extend((v as i32).to_le_bytes());
        }
        _ => {
            code.extend([0x8a, 8]);
            code.extend((v as i64).to_le_bytes());
        }
    };
    let unicode = |code: &mut Vec<u8>, s: &str| {
        code.push(b'X');
        code.extend((s.len() as u32).to_le_bytes());
        code.extend(s.as_bytes());
    };
    let n = labels.len();
    let mut code = vec![0x80, 2];
    code.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    unicode(&mut code, "storage");
    code.extend(b"ctorch\nLongStorage\n");
    unicode(&mut code, "0");
    unicode(&mut code, "cpu");
    int(&mut code, n);
    code.extend(b"tQ"); // the persistent id tuple, then BINPERSID
    int(&mut code, 0); // storage offset
    int(&mut code, n);
    code.push(0x85); // shape (n,)
    int(&mut code, 1);
    code.push(0x85); // stride (1,)
    code.push(0x89); // requires_grad False
    code.extend(b"ccollections\nOrderedDict\n)R"); // backward hooks: OrderedDict()
    code.extend(b"tR.");

    let data: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(data.len() > u32::MAX as usize);
    let entries: [(&str, &[u8]); 4] = [
        ("archive/data.pkl", &code),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &data),
        ("archive/version", b"3\n"),
    ];
    // Writing into a Vec cannot fail.
    for (name, bytes) in entries {
        zip.start_file(name, opts).expect("in-memory zip");
        zip.write_all(bytes).expect("in-memory zip");
    }
    zip.finish().expect("in-memory zip").into_inner()
}

/// Writes `labels` as `torch.save` would, atomically.
pub fn write_label_tensor(path: &Path, labels: &[i64]) -> Result<(), DataError> {
    atomic_io::write_atomic(path, &label_tensor_bytes(labels)).map_err(|e| DataError::file(path, e))
}

pub fn read_label_tensor(path: &Path) -> Result<Vec<i64>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_label_tensor(&bytes).map_err(|m| DataError::file(path, m))
}
