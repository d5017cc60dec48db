//! Self-test of the chaos proxy against a local echo server (no broker).

use crate::support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn forwards_severs_blackholes_and_refuses() {
    let upstream = echo_server().await;
    let proxy = support::chaos::start(upstream).await.unwrap();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"hello").await.unwrap(), b"hello");
    assert_eq!(proxy.accepted().len(), 1);
    assert_eq!(proxy.open_connections(), 1);

    // Sever: the client sees a reset.
    proxy.sever();
    let mut buf = [0u8; 8];
    let read = timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        read.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    timeout(Duration::from_secs(2), async {
        while proxy.open_connections() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();

    // Blackhole: writes succeed, nothing comes back, the socket stays open.
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"again").await.unwrap(), b"again");
    proxy.blackhole(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"lost").await.unwrap();
    assert!(
        timeout(Duration::from_millis(300), c.read(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(proxy.open_connections(), 1);
    proxy.blackhole(false);
    assert_eq!(roundtrip(&mut c, b"back").await.unwrap(), b"back");

    // A connection accepted during a blackhole is forwarded once it lifts.
    proxy.blackhole(true);
    let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
    late.write_all(b"queued").await.unwrap();
    assert!(
        timeout(Duration::from_millis(200), late.read(&mut buf))
            .await
            .is_err()
    );
    proxy.blackhole(false);
    let mut got = [0u8; 6];
    timeout(Duration::from_secs(2), late.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"queued");

    // Refuse: accepted then reset at once, counted apart.
    proxy.refuse(true);
    let mut r = TcpStream::connect(proxy.addr()).await.unwrap();
    let read = timeout(Duration::from_secs(2), r.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)));
    assert_eq!(proxy.refused(), 1);
    assert_eq!(proxy.accepted().len(), 3);
    proxy.refuse(false);

    // Dropping the proxy closes everything.
    drop(proxy);
    let read = timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)));
}
