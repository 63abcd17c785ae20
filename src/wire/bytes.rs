//! A strict reader for vaultfleet's hand-written binary encodings (fleet
//! artifacts, validation bundles, deployment evidence): big-endian integers and
//! length-prefixed fields with explicit bounds. Every shortfall is an error that
//! names what was cut short, never a panic.

/// Reads fields off the front of a byte slice.
pub struct ByteReader<'a>(&'a [u8]);

impl<'a> ByteReader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// True once every byte was read (a decoder refuses trailing bytes).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `u32`-length-prefixed field of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(format!("field of {n} bytes, at most {max} allowed"));
        }
        self.take(n)
    }

    /// A `u32`-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn text(&mut self, max: usize) -> Result<String, String> {
        String::from_utf8(self.bytes(max)?.to_vec()).map_err(|_| "text is not UTF-8".to_string())
    }

    /// A `u8`-length-prefixed UTF-8 string.
    pub fn short_text(&mut self) -> Result<String, String> {
        let n = self.u8()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "text is not UTF-8".to_string())
    }

    /// A `u32` count of at most `max` items.
    pub fn count(&mut self, max: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(format!("list of {n} items, at most {max} allowed"));
        }
        Ok(n)
    }
}

/// Appends a `u32`-length-prefixed field.
pub fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}
