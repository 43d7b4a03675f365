//! The PROXY protocol header (HAProxy `proxy-protocol.txt`, versions 1 and 2) written to
//! an upstream before the client's first byte (`backend.send_proxy`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::config::SendProxy;

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header announcing a TCP connection from `source` (the client) to `destination`
/// (the balancer's address it connected to); empty for [`SendProxy::Off`]. When the two
/// addresses are of different families, the IPv4 one is written IPv4-mapped (TCP6).
pub fn header(version: SendProxy, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(source, destination);
    match version {
        SendProxy::Off => Vec::new(),
        SendProxy::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        SendProxy::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            out.push(0x21);
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    // AF_INET, STREAM; 4 + 4 + 2 + 2 address bytes.
                    out.push(0x11);
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    // AF_INET6, STREAM; 16 + 16 + 2 + 2 address bytes.
                    out.push(0x21);
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

/// The header of a connection the balancer opens on its own behalf (a health probe): v1
/// `PROXY UNKNOWN`, v2 command LOCAL with no addresses; empty for [`SendProxy::Off`].
pub fn local(version: SendProxy) -> Vec<u8> {
    match version {
        SendProxy::Off => Vec::new(),
        SendProxy::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        SendProxy::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            // Version 2, command LOCAL; AF_UNSPEC, UNSPEC; no address bytes.
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family: IPv4 when both are (or are IPv4-mapped), else IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let a = SocketAddr::new(a.ip().to_canonical(), a.port());
    let b = SocketAddr::new(b.ip().to_canonical(), b.port());
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (
            SocketAddr::new(IpAddr::V6(v6(a.ip())), a.port()),
            SocketAddr::new(IpAddr::V6(v6(b.ip())), b.port()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("literal address")
    }

    #[test]
    fn v1_text_lines() {
        let h = header(SendProxy::V1, addr("10.0.0.1:5000"), addr("10.0.0.2:80"));
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n");
        let h = header(SendProxy::V1, addr("[::1]:5000"), addr("[::2]:80"));
        assert_eq!(h, b"PROXY TCP6 ::1 ::2 5000 80\r\n");
        let h = header(
            SendProxy::V1,
            addr("[::ffff:10.0.0.1]:1"),
            addr("10.0.0.2:2"),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n");
        assert!(header(SendProxy::Off, addr("10.0.0.1:1"), addr("10.0.0.2:2")).is_empty());
    }

    #[test]
    fn local_headers_for_probes() {
        assert_eq!(local(SendProxy::V1), b"PROXY UNKNOWN\r\n");
        let h = local(SendProxy::V2);
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..], &[0x20, 0x00, 0, 0]);
        assert!(local(SendProxy::Off).is_empty());
    }

    #[test]
    fn v2_binary() {
        let h = header(SendProxy::V2, addr("10.0.0.1:5000"), addr("10.0.0.2:80"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..], &[10, 0, 0, 1, 10, 0, 0, 2, 0x13, 0x88, 0, 80]);
        let h = header(SendProxy::V2, addr("[::1]:5000"), addr("10.0.0.2:80"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
    }
}
