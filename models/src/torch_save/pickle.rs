//! The subset of Python's pickle that `torch.save` writes for tensors, dicts of tensors and the
//! plain values around them (optimizer state, epochs, hyperparameters), evaluated without
//! running anything.
//!
//! Written here because no crate reads this safely: general pickle crates build arbitrary
//! objects, while this machine knows the opcodes of protocols 2–5 that carry data, admits only
//! the globals a tensor dict needs (as names; nothing is ever called) and refuses everything else
//! with the global's name, so a crafted file cannot run code or allocate without bound.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

/// A storage's element type, from its pickled class (`torch.FloatStorage`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_global(name: &str) -> Option<Self> {
        Some(match name {
            "torch.DoubleStorage" => Self::F64,
            "torch.FloatStorage" => Self::F32,
            "torch.HalfStorage" => Self::F16,
            "torch.BFloat16Storage" => Self::BF16,
            "torch.LongStorage" => Self::I64,
            "torch.IntStorage" => Self::I32,
            "torch.ShortStorage" => Self::I16,
            "torch.CharStorage" => Self::I8,
            "torch.ByteStorage" => Self::U8,
            "torch.BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F64 => "float64",
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        }
    }
}

/// A tensor as the pickle describes it: a view into a storage that the archive holds under
/// `data/<key>`. Read lazily, so the optimizer state beside a state_dict costs nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub dtype: StorageDtype,
    pub key: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

pub type Shared<T> = Rc<RefCell<T>>;

/// Pickle values. Lists and dicts are shared, as in Python: a memo entry and the stack see the
/// same object, so items set after it was memoized are seen through both.
#[derive(Debug, Clone)]
pub enum Value {
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(usize),
    Bool(bool),
    None,
    Tuple(Vec<Value>),
    List(Shared<Vec<Value>>),
    Dict(Shared<Vec<(Value, Value)>>),
    Global(&'static str),
    Storage { dtype: StorageDtype, key: String },
    Tensor(TensorRef),
    Mark,
}

/// Values are dropped with a work list, not by recursion: a crafted pickle can nest lists a
/// million deep (append each new list into the previous one through the memo) within the item
/// bound, and a recursive drop of that overflows the thread's stack. A list or dict still shared
/// elsewhere (or in a cycle) keeps its items.
impl Drop for Value {
    fn drop(&mut self) {
        let mut work = Vec::new();
        take_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_children(&mut v, &mut work);
        }
    }
}

fn take_children(v: &mut Value, work: &mut Vec<Value>) {
    match v {
        Value::Tuple(items) => work.append(items),
        Value::List(l) if Rc::strong_count(l) == 1 => work.append(&mut l.borrow_mut()),
        Value::Dict(d) if Rc::strong_count(d) == 1 => {
            for (k, v) in d.borrow_mut().drain(..) {
                work.push(k);
                work.push(v);
            }
        }
        _ => {}
    }
}

/// How deeply tuples nest in `v` (lists and dicts are shared, not copied, so they end the count):
/// `Clone` copies tuples by recursion, so their nesting is bounded where they are built.
fn tuple_depth(v: &Value) -> usize {
    match v {
        Value::Tuple(items) => 1 + items.iter().map(tuple_depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The `(key, value)` pairs of a dict whose keys are strings (others are skipped).
    pub fn str_items(&self) -> Option<Vec<(String, Value)>> {
        let Value::Dict(d) = self else { return None };
        let items = d.borrow();
        Some(
            items
                .iter()
                .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v.clone())))
                .collect(),
        )
    }

    /// What a value is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Bool(_) => "bool",
            Value::None => "None",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
            Value::Mark => "mark",
        }
    }
}

/// The only globals a file may name; each is a name here, never called.
const ALLOWED_GLOBALS: [&str; 13] = [
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "collections.OrderedDict",
    "torch.DoubleStorage",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
];
/// Far above what a resnet50 checkpoint with its optimizer state uses (≈ 3,000 memo entries,
/// SETITEMS batches of 1,000 pairs); they stop hostile inputs early.
const MAX_MEMO: usize = 1 << 20;
const MAX_STACK: usize = 1 << 16;
const MAX_ITEMS: usize = 1 << 24;
/// Tuples inside tuples: `torch.save` writes at most a handful (a tensor's arguments).
pub const MAX_TUPLE_DEPTH: usize = 64;
/// Tensors in one file: a resnet50 checkpoint with its optimizer state has about 1,000.
pub const MAX_TENSORS: usize = 1 << 20;
/// Values visited, over the whole pickle, by the checks that an insertion makes no cycle: a
/// state_dict's are a few times its items; a pickle that inserts one large list many times
/// would otherwise cost items × list length.
pub const MAX_CYCLE_WALK: usize = 1 << 26;

struct Machine<'a> {
    code: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: Vec<Option<Value>>,
    items: usize,
    tensors: usize,
    walked: usize,
}

/// The list or dict cell a value is, as an address (None for anything else).
fn cell(v: &Value) -> Option<*const ()> {
    match v {
        Value::List(l) => Some(Rc::as_ptr(l) as *const ()),
        Value::Dict(d) => Some(Rc::as_ptr(d) as *const ()),
        _ => None,
    }
}

/// Whether the container at `target` is reachable from `v`: inserting `v` into it would make a
/// cycle, which reference counting never frees (a crafted pickle can put a dict into itself
/// through the memo). Each value visited counts against `walked`.
fn reaches(v: &Value, target: *const (), walked: &mut usize) -> Result<bool, String> {
    let mut seen = HashSet::new();
    let mut containers = Vec::new();
    // Values outside any container's borrow: `v` itself, and the items of each container as it
    // is opened (tuples are walked where they are, their containers queued).
    let mut visit = |v: &Value, containers: &mut Vec<Value>, walked: &mut usize| {
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            *walked += 1;
            match v {
                Value::Tuple(items) => stack.extend(items),
                Value::List(_) | Value::Dict(_) => {
                    let c = cell(v).expect("a container");
                    if c == target {
                        return true;
                    }
                    if seen.insert(c) {
                        containers.push(v.clone());
                    }
                }
                _ => {}
            }
        }
        false
    };
    if visit(v, &mut containers, walked) {
        return Ok(true);
    }
    while let Some(c) = containers.pop() {
        if *walked > MAX_CYCLE_WALK {
            return Err("a pickle whose containers are shared too widely to check".into());
        }
        let found = match &c {
            Value::List(l) => l.borrow().iter().any(|i| visit(i, &mut containers, walked)),
            Value::Dict(d) => d.borrow().iter().any(|(k, i)| {
                visit(k, &mut containers, walked) || visit(i, &mut containers, walked)
            }),
            _ => false,
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

impl<'a> Machine<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.code.len());
        let end = end.ok_or("truncated pickle")?;
        let s = &self.code[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
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

    fn text(&mut self, n: usize) -> Result<Value, String> {
        let s = std::str::from_utf8(self.bytes(n)?).map_err(|_| "a string is not UTF-8")?;
        Ok(Value::Str(s.to_string()))
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
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("an opcode needs a MARK that is not there")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&self) -> Result<&Value, String> {
        self.stack.last().ok_or_else(|| "empty pickle stack".into())
    }

    fn count(&mut self, n: usize) -> Result<(), String> {
        self.items += n;
        if self.items > MAX_ITEMS {
            return Err("too many items in the pickle".into());
        }
        Ok(())
    }

    fn memo_put(&mut self, i: usize) -> Result<(), String> {
        if i >= MAX_MEMO {
            return Err(format!("memo index {i} out of bounds"));
        }
        let top = self.top()?.clone();
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

    fn global(&mut self, module: &str, name: &str) -> Result<(), String> {
        let full = format!("{module}.{name}");
        let known = ALLOWED_GLOBALS.iter().find(|g| **g == full);
        let known = known.ok_or_else(|| format!("refusing pickle global `{full}`"))?;
        self.push(Value::Global(known))
    }

    fn tuple(&mut self, n: usize) -> Result<(), String> {
        if self.stack.len() < n {
            return Err("pickle stack underflow".into());
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.push_tuple(items)
    }

    /// Items about to go into the container on top of the stack may not lead back to it.
    fn refuse_cycles(&mut self, items: &[Value]) -> Result<(), String> {
        let Some(target) = cell(self.top()?) else {
            return Ok(());
        };
        for item in items {
            if reaches(item, target, &mut self.walked)? {
                return Err("a list or dict that contains itself".into());
            }
        }
        Ok(())
    }

    fn push_tuple(&mut self, items: Vec<Value>) -> Result<(), String> {
        let t = Value::Tuple(items);
        if tuple_depth(&t) > MAX_TUPLE_DEPTH {
            return Err(format!("tuples nested deeper than {MAX_TUPLE_DEPTH}"));
        }
        self.push(t)
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        self.count(items.len())?;
        self.refuse_cycles(&items)?;
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            other => return Err(format!("APPEND to a {}", other.kind())),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        self.count(items.len() / 2)?;
        self.refuse_cycles(&items)?;
        let Value::Dict(d) = self.top()? else {
            return Err(format!("SETITEM on a {}", self.top()?.kind()));
        };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    /// BUILD sets an object's state; the only object here that has one is an `OrderedDict`
    /// (a module's state_dict carries `_metadata`, the modules' versions), which is dropped.
    fn build(&mut self) -> Result<(), String> {
        let state = self.pop()?;
        match (self.top()?, &state) {
            (Value::Dict(_), Value::Dict(_) | Value::None) => Ok(()),
            (obj, _) => Err(format!(
                "refusing BUILD of a {} with a {}",
                obj.kind(),
                state.kind()
            )),
        }
    }

    fn step(&mut self, op: u8) -> Result<Option<Value>, String> {
        match op {
            0x80 => {
                self.byte()?; // PROTO n
            }
            0x95 => {
                self.bytes(8)?; // FRAME length
            }
            b'.' => return self.pop().map(Some),
            b'(' => self.push(Value::Mark)?,
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v)?;
            }
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(v.into()))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()))?;
            }
            b'J' => {
                let v = i32::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()))?;
            }
            0x8a => {
                let n = self.byte()? as usize;
                let v = long1(self.bytes(n)?)?;
                self.push(Value::Int(v))?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.le()?);
                self.push(Value::Float(v))?;
            }
            b'X' => {
                let n = u32::from_le_bytes(self.le()?) as usize;
                let s = self.text(n)?;
                self.push(s)?;
            }
            0x8c => {
                let n = self.byte()? as usize;
                let s = self.text(n)?;
                self.push(s)?;
            }
            0x8d => {
                let n = u64::from_le_bytes(self.le()?);
                let n = usize::try_from(n).map_err(|_| "string too long")?;
                let s = self.text(n)?;
                self.push(s)?;
            }
            b'C' => {
                let n = self.byte()? as usize;
                self.bytes(n)?;
                self.push(Value::Bytes(n))?;
            }
            b'B' => {
                let n = u32::from_le_bytes(self.le()?) as usize;
                self.bytes(n)?;
                self.push(Value::Bytes(n))?;
            }
            b')' => self.push(Value::Tuple(vec![]))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push_tuple(items)?;
            }
            0x85..=0x87 => self.tuple((op - 0x84) as usize)?,
            b']' => self.push(Value::List(Rc::default()))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))))?;
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            b'}' => self.push(Value::Dict(Rc::default()))?,
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Rc::default()))?;
                self.set_items(items)?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            b'q' => {
                let i = self.byte()? as usize;
                self.memo_put(i)?;
            }
            b'r' => {
                let i = u32::from_le_bytes(self.le()?) as usize;
                self.memo_put(i)?;
            }
            0x94 => self.memo_put(self.memo.len())?,
            b'h' => {
                let i = self.byte()? as usize;
                self.memo_get(i)?;
            }
            b'j' => {
                let i = u32::from_le_bytes(self.le()?) as usize;
                self.memo_get(i)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(&module, &name)?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&module, &name) {
                    (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                    _ => return Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push(persistent_load(&pid)?)?;
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = reduce(&callable, &args)?;
                if matches!(v, Value::Tensor(_)) {
                    self.tensors += 1;
                    if self.tensors > MAX_TENSORS {
                        return Err(format!("more than {MAX_TENSORS} tensors"));
                    }
                }
                self.push(v)?;
            }
            b'b' => self.build()?,
            other => return Err(format!("refusing pickle opcode 0x{other:02x}")),
        }
        Ok(None)
    }
}

/// LONG1: little-endian two's complement of at most 8 bytes.
fn long1(b: &[u8]) -> Result<i64, String> {
    if b.len() > 8 {
        return Err("LONG1 wider than 64 bits".into());
    }
    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
        [0xff; 8]
    } else {
        [0; 8]
    };
    buf[..b.len()].copy_from_slice(b);
    Ok(i64::from_le_bytes(buf))
}

fn persistent_load(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(t) = pid else {
        return Err("unexpected persistent id".into());
    };
    match t.as_slice() {
        [Value::Str(kind), Value::Global(class), Value::Str(key), Value::Str(_location), Value::Int(_numel)]
            if kind == "storage" =>
        {
            let dtype = StorageDtype::from_global(class)
                .ok_or_else(|| format!("`{class}` is not a storage type"))?;
            Ok(Value::Storage {
                dtype,
                key: key.clone(),
            })
        }
        _ => Err("unexpected persistent id".into()),
    }
}

fn dims(v: &Value) -> Result<Vec<usize>, String> {
    let Value::Tuple(items) = v else {
        return Err("a tensor's shape or stride is not a tuple".into());
    };
    items
        .iter()
        .map(|i| match i {
            Value::Int(x) => usize::try_from(*x).map_err(|_| "negative shape or stride".into()),
            _ => Err("a tensor's shape or stride is not integers".to_string()),
        })
        .collect()
}

fn reduce(callable: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(name) = callable else {
        return Err(format!("refusing REDUCE of a {}", callable.kind()));
    };
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match (*name, args.as_slice()) {
        ("collections.OrderedDict", []) => Ok(Value::Dict(Rc::default())),
        (
            "torch._utils._rebuild_tensor_v2",
            [Value::Storage { dtype, key }, Value::Int(offset), shape, stride, ..],
        ) => {
            let (shape, stride) = (dims(shape)?, dims(stride)?);
            if shape.len() != stride.len() {
                return Err("a tensor's shape and stride differ in length".into());
            }
            Ok(Value::Tensor(TensorRef {
                dtype: *dtype,
                key: key.clone(),
                offset: usize::try_from(*offset).map_err(|_| "negative storage offset")?,
                shape,
                stride,
            }))
        }
        ("torch._utils._rebuild_parameter", [t @ Value::Tensor(_), ..]) => Ok(t.clone()),
        (name, _) => Err(format!("refusing to call `{name}` with these arguments")),
    }
}

/// Evaluates a pickle; the value it leaves is the object `torch.save` was given.
pub fn evaluate(code: &[u8]) -> Result<Value, String> {
    let mut m = Machine {
        code,
        pos: 0,
        stack: vec![],
        memo: vec![],
        items: 0,
        tensors: 0,
        walked: 0,
    };
    loop {
        let op = m.byte()?;
        if let Some(v) = m.step(op)? {
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `((((...))))` 100 deep: a derived `Clone` of it recurses that far, so it is refused.
    #[test]
    fn deeply_nested_tuples_are_refused() {
        let mut code = vec![0x80, 2, b')'];
        code.extend(std::iter::repeat_n(0x85, 100)); // TUPLE1: wrap the top in a 1-tuple
        code.push(b'.');
        let err = evaluate(&code).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
        let mut ok = vec![0x80, 2, b')'];
        ok.extend(std::iter::repeat_n(0x85, MAX_TUPLE_DEPTH - 1));
        ok.push(b'.');
        assert!(evaluate(&ok).is_ok());
    }

    /// A million lists, each appended into the one before through the memo (7 bytes a level):
    /// evaluated and dropped without recursion (a recursive drop overflows a test thread's stack).
    #[test]
    fn a_million_nested_lists_drop_without_recursion() {
        // The outermost list in memo 0; then a level: EMPTY_LIST, BINPUT 1, APPEND (into the list
        // below), POP, BINGET 1 (the new list alone on the stack).
        let mut code = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..1_000_000 {
            code.extend([b']', b'q', 1, b'a', b'0', b'h', 1]);
        }
        code.extend([b'0', b'h', 0, b'.']); // the outermost is the result
        let v = evaluate(&code).unwrap();
        assert!(matches!(v, Value::List(_)));
        drop(v);
    }

    /// Found by fuzzing: a dict set into itself through the memo leaked (a reference cycle).
    #[test]
    fn a_container_inside_itself_is_refused() {
        // A list appended to itself: EMPTY_LIST, BINPUT 0, BINGET 0, APPEND.
        let err = evaluate(&[0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.']).unwrap_err();
        assert!(err.contains("contains itself"), "{err}");
        // A dict whose value is a tuple holding a list that holds the dict.
        let code = [
            0x80, 2, b'}', b'q', 0, // the dict, memo 0
            b'X', 1, 0, 0, 0, b'k', // key "k"
            b']', b'h', 0, b'a', // [dict]
            0x85, // (that list,)
            b's', b'.',
        ];
        let err = evaluate(&code).unwrap_err();
        assert!(err.contains("contains itself"), "{err}");
        // One list in two places is sharing, not a cycle.
        // An outer list, an inner one (memo 0, popped), then the inner appended twice.
        let shared = [
            0x80, 2, b']', b']', b'q', 0, b'0', b'(', b'h', 0, b'h', 0, b'e', b'.',
        ];
        assert!(evaluate(&shared).is_ok());
    }

    #[test]
    fn more_tensors_than_the_bound_are_refused() {
        // One tensor rebuilt from a memoized storage id and arguments, MAX_TENSORS + 1 times.
        let mut code = vec![0x80, 2, b'('];
        code.extend(b"\x8c\x07storagectorch\nFloatStorage\n\x8c\x010\x8c\x03cpuK\x01tQq\x01");
        code.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02");
        code.extend(b"(h\x01K\x00K\x01\x85K\x01\x85\x89}tq\x03");
        code.push(b']');
        for _ in 0..=MAX_TENSORS {
            code.extend([b'h', 2, b'h', 3, b'R', b'a']);
        }
        code.push(b'.');
        let err = evaluate(&code).unwrap_err();
        assert!(err.contains("tensors"), "{err}");
    }
}
