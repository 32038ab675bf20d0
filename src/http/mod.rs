//! The HTTP/1.1 codec on httparse over monoio's owned-buffer TcpStream:
//! heads, body framing and streaming, limits and timed I/O.

pub mod body;
pub mod chunked;
pub mod conn;
pub mod head;
pub mod io;
pub mod path;
pub mod timer;

pub use conn::Conn;
pub use head::{Framing, HeadError, Parsed, RequestHead, ResponseHead};
