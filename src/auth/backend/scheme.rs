//! Stub: stored-hash schemes of mail databases (argon2, bcrypt, SHA-crypt), with or without
//! Dovecot's `{SCHEME}` prefix.
