//! Zero-copy sends of file ranges to a socket with `sendfile(2)`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Sends `len` bytes of `file` from `position` to the socket, waiting for writability as
/// needed. Fails if the file is shorter than the range (the frame would otherwise be short).
pub async fn send(sock: &TcpStream, file: &File, position: u64, len: usize) -> io::Result<()> {
    let mut offset = libc::off_t::try_from(position).map_err(|_| io::Error::other("position too large"))?;
    let mut left = len;
    while left > 0 {
        sock.writable().await?;
        let r = sock.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call (we hold the
            // File and the TcpStream), and `offset` is a valid pointer to an off_t.
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut offset, left) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than the range to send")),
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
