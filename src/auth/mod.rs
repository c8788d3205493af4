//! Authentication: SASL decoding ([`sasl`], pure), the users file ([`users`]), argon2id
//! verification off the reactor ([`verify`]) and sender ownership ([`senders`]).

pub mod sasl;
pub mod senders;
pub mod users;
pub mod verify;
