//! Labels saved with `torch.save(tensor)` (a 1-D int64 tensor), read without libtorch and without
//! executing pickle code.
//!
//! Written here because no crate reads this format safely: general pickle crates build arbitrary
//! objects, while this reader knows the ~20 opcodes and three globals that a saved tensor uses
//! and refuses everything else (so a crafted file cannot run code or allocate without bound).

use std::io::Read;
use std::path::Path;

use crate::error::DataError;

/// Pickle values a saved tensor is made of.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Str(String),
    Bool(bool),
    None,
    Tuple(Vec<Value>),
    Global(String),
    Storage {
        dtype: String,
        key: String,
    },
    Tensor {
        key: String,
        offset: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
    EmptyDict,
    Mark,
}

/// Globals are only ever names here, never called: storage types beyond int64 are admitted so
/// that a float label file gets a precise "must be int64" error.
const ALLOWED_GLOBALS: [&str; 12] = [
    "torch._utils._rebuild_tensor_v2",
    "collections.OrderedDict",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
];
/// Bounds that a label file never comes near; they stop hostile inputs early.
const MAX_MEMO: usize = 1 << 16;
const MAX_STACK: usize = 1 << 12;

struct Machine<'a> {
    code: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: Vec<Option<Value>>,
}

impl<'a> Machine<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.code.get(self.pos).ok_or("truncated pickle")?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.code.len());
        let end = end.ok_or("truncated pickle")?;
        let s = &self.code[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.code[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated GLOBAL")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL is not UTF-8")?;
        self.pos += n + 1;
        Ok(s.to_string())
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err("pickle stack too deep".into());
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("TUPLE without MARK")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn memo_put(&mut self, i: usize) -> Result<(), String> {
        if i >= MAX_MEMO {
            return Err(format!("memo index {i} out of bounds"));
        }
        let top = self.stack.last().ok_or("PUT on empty stack")?.clone();
        if self.memo.len() <= i {
            self.memo.resize(i + 1, None);
        }
        self.memo[i] = Some(top);
        Ok(())
    }

    fn memo_get(&mut self, i: usize) -> Result<(), String> {
        let v = self
            .memo
            .get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| format!("GET of unset memo {i}"))?;
        self.push(v)
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    self.byte()?; // PROTO n
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let full = format!("{module}.{name}");
                    if !ALLOWED_GLOBALS.contains(&full.as_str()) {
                        return Err(format!("refusing pickle global `{full}`"));
                    }
                    self.push(Value::Global(full))?;
                }
                b'(' => self.push(Value::Mark)?,
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = std::str::from_utf8(self.bytes(n)?).map_err(|_| "bad UTF-8")?;
                    self.push(Value::Str(s.to_string()))?;
                }
                0x8c => {
                    let n = self.byte()? as usize;
                    let s = std::str::from_utf8(self.bytes(n)?).map_err(|_| "bad UTF-8")?;
                    self.push(Value::Str(s.to_string()))?;
                }
                b'K' => {
                    let v = self.byte()? as i64;
                    self.push(Value::Int(v))?;
                }
                b'M' => {
                    let b = self.bytes(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))?;
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Value::Int(v))?;
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n ≤ 8 bytes.
                    let n = self.byte()? as usize;
                    if n > 8 {
                        return Err("LONG1 wider than 64 bits".into());
                    }
                    let b = self.bytes(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b')' => self.push(Value::Tuple(vec![]))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?;
                }
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'N' => self.push(Value::None)?,
                b'}' => self.push(Value::EmptyDict)?,
                b'q' => {
                    let i = self.byte()? as usize;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()? as usize;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.byte()? as usize;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()? as usize;
                    self.memo_get(i)?;
                }
                0x95 => {
                    self.bytes(8)?; // FRAME length (protocol 4)
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(persistent_load(pid)?)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(reduce(callable, args)?)?;
                }
                b'.' => return self.pop(),
                other => return Err(format!("refusing pickle opcode 0x{other:02x}")),
            }
        }
    }
}

fn persistent_load(pid: Value) -> Result<Value, String> {
    match pid {
        Value::Tuple(t) => match t.as_slice() {
            [Value::Str(kind), Value::Global(dtype), Value::Str(key), Value::Str(_loc), Value::Int(_n)]
                if kind == "storage" =>
            {
                Ok(Value::Storage {
                    dtype: dtype.clone(),
                    key: key.clone(),
                })
            }
            _ => Err("unexpected persistent id".into()),
        },
        _ => Err("unexpected persistent id".into()),
    }
}

fn ints(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(x) if *x >= 0 => Ok(*x as usize),
                _ => Err("bad shape or stride".to_string()),
            })
            .collect(),
        _ => Err("bad shape or stride".into()),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = callable else {
        return Err("REDUCE of a non-global".into());
    };
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match name.as_str() {
        "collections.OrderedDict" if args.is_empty() => Ok(Value::EmptyDict),
        "torch._utils._rebuild_tensor_v2" => match args.as_slice() {
            [Value::Storage { dtype, key }, Value::Int(offset), shape, stride, Value::Bool(_), ..] =>
            {
                if dtype != "torch.LongStorage" {
                    return Err(format!("labels must be int64, found {dtype}"));
                }
                Ok(Value::Tensor {
                    key: key.clone(),
                    offset: usize::try_from(*offset).map_err(|_| "negative offset")?,
                    shape: ints(shape)?,
                    stride: ints(stride)?,
                })
            }
            _ => Err("unexpected _rebuild_tensor_v2 arguments".into()),
        },
        other => Err(format!("refusing to call `{other}`")),
    }
}

/// Parses the bytes of a `torch.save` zip archive holding one 1-D int64 tensor.
pub fn parse_label_tensor(bytes: &[u8]) -> Result<Vec<i64>, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a torch.save zip archive: {e}"))?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or("no data.pkl in archive")?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let read = |zip: &mut zip::ZipArchive<_>, name: &str, limit: u64| -> Result<Vec<u8>, String> {
        let f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        let mut buf = Vec::new();
        f.take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(buf)
    };
    if let Ok(order) = read(&mut zip, &format!("{prefix}byteorder"), 16) {
        if order != b"little" {
            return Err("big-endian tensors are not supported".into());
        }
    }
    let code = read(&mut zip, &pkl, 1 << 20)?;
    let value = Machine {
        code: &code,
        pos: 0,
        stack: vec![],
        memo: vec![],
    }
    .run()?;
    let Value::Tensor {
        key,
        offset,
        shape,
        stride,
    } = value
    else {
        return Err("the pickle does not hold a tensor".into());
    };
    if shape.len() != 1 {
        return Err(format!("expected a 1-D tensor, found shape {shape:?}"));
    }
    let n = shape[0];
    let step = stride.first().copied().unwrap_or(1);
    // Bounded by the storage's actual size (itself capped: a deflate bomb stops at 256 MiB, 33M
    // labels), not by what the pickle claims.
    let storage = read(&mut zip, &format!("{prefix}data/{key}"), MAX_STORAGE_BYTES)?;
    let words: Vec<i64> = storage
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if n > words.len() {
        return Err(format!(
            "the tensor claims {n} labels, its storage holds {}",
            words.len()
        ));
    }
    (0..n)
        .map(|i| {
            i.checked_mul(step)
                .and_then(|x| x.checked_add(offset))
                .and_then(|j| words.get(j).copied())
                .ok_or_else(|| "tensor reaches past its storage".to_string())
        })
        .collect()
}

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
