//! The vault's public limits, in one place: every layer (client, server,
//! replicated machine) checks against these.

/// The most attempts a registration may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 255;
/// The attempts a registration allows unless it asks otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// The longest user id, in bytes.
pub const USER_ID_MAX: usize = 256;
/// The longest secret a user may store, in bytes.
pub const SECRET_MAX: usize = 1024;

const _: () = assert!(DEFAULT_MAX_ATTEMPTS >= 1 && DEFAULT_MAX_ATTEMPTS <= MAX_ATTEMPTS_LIMIT);
// A user id's length is written as a u16 in the credential identifier and AADs.
const _: () = assert!(USER_ID_MAX <= u16::MAX as usize);
