//! Reads the PROXY protocol header off an accepted socket, around the sans-IO
//! [`HeaderReader`]: peek, offer, consume exactly the header's bytes (see [`crate::proxy`]).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::proxy::{Header, HeaderReader, MAX_HEADER, Offer, ProxyError};

/// Why [`read_header`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Malformed(#[from] ProxyError),
    #[error("connection closed before the PROXY header was complete")]
    Eof,
    #[error("PROXY header not received within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Read a PROXY header from `tcp` within `limit`, consuming exactly its bytes.
pub async fn read_header(tcp: &mut TcpStream, limit: Duration) -> Result<Header, ReadError> {
    tokio::time::timeout(limit, read_header_untimed(tcp))
        .await
        .map_err(|_| ReadError::Timeout(limit))?
}

async fn read_header_untimed(tcp: &mut TcpStream) -> Result<Header, ReadError> {
    let mut reader = HeaderReader::new();
    let mut peeked = [0u8; MAX_HEADER];
    loop {
        let room = reader.room();
        let n = tcp.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        match reader.offer(&peeked[..n])? {
            Offer::Done { header, consume } => {
                // Consume the header's bytes only; what follows stays in the socket.
                tcp.read_exact(&mut peeked[..consume]).await?;
                return Ok(header);
            }
            Offer::NeedMore => {
                // Every byte offered belongs to the header: consume them; the next peek then
                // waits for new bytes.
                tcp.read_exact(&mut peeked[..n]).await?;
            }
        }
    }
}
