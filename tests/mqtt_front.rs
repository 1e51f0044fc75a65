//! An MQTT-aware TLS front between a gateway and the real Mosquitto: it terminates the gateway's
//! TLS with the broker's own certificate, connects on to Mosquitto over TLS with the gateway's
//! client certificate (so the broker's ACL sees the gateway's identity), and forwards every
//! packet while recording what the gateway put on the wire: each CONNECT's protocol version and
//! session expiry, each PUBLISH's topic name and topic alias.
//!
//! It can also play the parts the tests need:
//! - a broker that only speaks MQTT 3.1.1 ([`MqttFront::refuse_v5`]): an MQTT 5 CONNECT gets
//!   the 3.1.1 answer for an unknown protocol level (CONNACK return code 1, then the connection
//!   is closed, MQTT 3.1.1 §3.1.2.2);
//! - a link that stops delivering to the gateway ([`MqttFront::stall_downstream`]: PUBACKs and
//!   acknowledgements wait), then drops ([`MqttFront::cut`]).
//!
//! One runtime thread; stopped on drop.

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rumqttc::tokio_rustls::{TlsAcceptor, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::broker::{Broker, Pki};

/// What the gateway sent, in order, numbered by connection (0 = the first one accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Connect {
        connection: usize,
        /// 4 for MQTT 3.1.1, 5 for MQTT 5.
        level: u8,
        session_expiry: Option<u32>,
    },
    /// An MQTT 5 CONNECT answered as a 3.1.1-only broker would.
    RefusedV5 { connection: usize },
    Publish {
        connection: usize,
        topic: String,
        alias: Option<u16>,
        /// The whole packet.
        bytes: usize,
    },
}

#[derive(Debug, Default)]
struct Shared {
    refuse_v5: AtomicBool,
    stall_downstream: AtomicBool,
    seen: Mutex<Vec<Seen>>,
    connections: Mutex<usize>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MqttFront {
    port: u16,
    shared: Arc<Shared>,
    cut: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MqttFront {
    /// A front for the gateway whose certificate is for `identity`, to `broker`.
    pub fn start(broker: &Broker, pki: &Pki, identity: &str) -> Result<MqttFront> {
        let (cert, key) = pki.server_paths();
        let chain = CertificateDer::pem_file_iter(&cert)
            .with_context(|| format!("cannot read {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .with_context(|| format!("cannot read {}", key.display()))?;
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let connector = TlsConnector::from(Arc::new(pki.client(identity)?.tls_config()?));
        let upstream = broker.port();

        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let (cut, cut_rx) = watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn({
            let shared = Arc::clone(&shared);
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("listener");
                    let accept = async {
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else {
                                continue;
                            };
                            let connection = {
                                let mut n = shared.connections.lock().unwrap();
                                *n += 1;
                                *n - 1
                            };
                            tokio::spawn(serve(
                                tcp,
                                connection,
                                acceptor.clone(),
                                connector.clone(),
                                upstream,
                                Arc::clone(&shared),
                                cut_rx.clone(),
                            ));
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stop_rx => {}
                    }
                });
            }
        });
        Ok(MqttFront {
            port,
            shared,
            cut,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Answer MQTT 5 CONNECTs as a 3.1.1-only broker does.
    pub fn refuse_v5(&self, on: bool) {
        self.shared.refuse_v5.store(on, Ordering::SeqCst);
    }

    /// Hold everything the broker sends to the gateway (in the socket buffers) while on.
    pub fn stall_downstream(&self, on: bool) {
        self.shared.stall_downstream.store(on, Ordering::SeqCst);
    }

    /// Drops every connection open now (TCP closed, no TLS close or MQTT DISCONNECT).
    pub fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.shared.connections.lock().unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Publishes the broker could not have resolved: an alias used alone on a connection where
    /// no publish with a name had defined it (MQTT 5 §3.3.2.3.4: aliases last one connection).
    pub fn alias_violations(&self) -> Vec<Seen> {
        let mut tables: HashMap<usize, HashMap<u16, String>> = HashMap::new();
        let mut violations = Vec::new();
        for seen in self.seen() {
            if let Seen::Publish {
                connection,
                topic,
                alias: Some(alias),
                ..
            } = &seen
            {
                let table = tables.entry(*connection).or_default();
                if topic.is_empty() {
                    if !table.contains_key(alias) {
                        violations.push(seen.clone());
                    }
                } else {
                    table.insert(*alias, topic.clone());
                }
            }
        }
        violations
    }
}

impl Drop for MqttFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    tcp: TcpStream,
    connection: usize,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    upstream: u16,
    shared: Arc<Shared>,
    mut cut: watch::Receiver<u64>,
) {
    cut.borrow_and_update();
    let work = async {
        let mut client = acceptor.accept(tcp).await?;
        let connect = read_packet(&mut client).await?;
        let (level, session_expiry) = parse_connect(&connect)?;
        if level == 5 && shared.refuse_v5.load(Ordering::SeqCst) {
            shared
                .seen
                .lock()
                .unwrap()
                .push(Seen::RefusedV5 { connection });
            client.write_all(&[0x20, 0x02, 0x00, 0x01]).await?;
            client.shutdown().await?;
            return Ok(());
        }
        shared.seen.lock().unwrap().push(Seen::Connect {
            connection,
            level,
            session_expiry,
        });
        let tcp = TcpStream::connect(("127.0.0.1", upstream)).await?;
        let name = ServerName::try_from("127.0.0.1").expect("address");
        let mut broker = connector.connect(name, tcp).await?;
        broker.write_all(&connect).await?;
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let (mut broker_rx, mut broker_tx) = tokio::io::split(broker);
        let up = forward_up(&mut client_rx, &mut broker_tx, level, connection, &shared);
        let down = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                while shared.stall_downstream.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let n = broker_rx.read(&mut buf).await?;
                if n == 0 {
                    return anyhow::Ok(());
                }
                client_tx.write_all(&buf[..n]).await?;
            }
        };
        tokio::select! {
            result = up => result,
            result = down => result,
        }
    };
    tokio::select! {
        _ = work => {}
        _ = cut.changed() => {}
    }
}

/// Gateway to broker, packet by packet, recording each PUBLISH.
async fn forward_up(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    level: u8,
    connection: usize,
    shared: &Shared,
) -> Result<()> {
    loop {
        let packet = read_packet(from).await?;
        if packet[0] >> 4 == 3 {
            let (topic, alias) = parse_publish(&packet, level)?;
            shared.seen.lock().unwrap().push(Seen::Publish {
                connection,
                topic,
                alias,
                bytes: packet.len(),
            });
        }
        to.write_all(&packet).await?;
    }
}

/// One whole MQTT packet: fixed header, remaining length, body.
async fn read_packet(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>> {
    let mut packet = vec![stream.read_u8().await?];
    let mut length = 0usize;
    for shift in 0..4 {
        let byte = stream.read_u8().await?;
        packet.push(byte);
        length |= usize::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            let start = packet.len();
            packet.resize(start + length, 0);
            stream.read_exact(&mut packet[start..]).await?;
            return Ok(packet);
        }
    }
    bail!("remaining length longer than 4 bytes")
}

/// Where the variable header starts.
fn body_start(packet: &[u8]) -> usize {
    1 + packet[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1
}

/// A CONNECT's protocol level and, for MQTT 5, its session expiry interval.
fn parse_connect(packet: &[u8]) -> Result<(u8, Option<u32>)> {
    if packet[0] != 0x10 {
        bail!("first packet is not CONNECT: {:#04x}", packet[0]);
    }
    let mut at = body_start(packet);
    let name_len = usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
    at += 2 + name_len;
    let level = packet[at];
    at += 1 + 1 + 2; // level, flags, keepalive
    if level != 5 {
        return Ok((level, None));
    }
    let (props_len, len_len) = varint(&packet[at..])?;
    at += len_len;
    let properties = find_properties(&packet[at..at + props_len])?;
    Ok((level, properties.session_expiry))
}

/// A PUBLISH's topic name and topic alias.
fn parse_publish(packet: &[u8], level: u8) -> Result<(String, Option<u16>)> {
    let qos = (packet[0] >> 1) & 3;
    let mut at = body_start(packet);
    let topic_len = usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
    let topic = String::from_utf8(packet[at + 2..at + 2 + topic_len].to_vec())?;
    at += 2 + topic_len;
    if qos > 0 {
        at += 2;
    }
    if level != 5 {
        return Ok((topic, None));
    }
    let (props_len, len_len) = varint(&packet[at..])?;
    at += len_len;
    Ok((topic, find_properties(&packet[at..at + props_len])?.alias))
}

#[derive(Debug, Default)]
struct Properties {
    session_expiry: Option<u32>,
    alias: Option<u16>,
}

/// The MQTT 5 properties the front looks at; the others are skipped by their type's size.
fn find_properties(mut bytes: &[u8]) -> Result<Properties> {
    let mut found = Properties::default();
    let string_len = |b: &[u8]| 2 + usize::from(u16::from_be_bytes([b[0], b[1]]));
    while let Some((&id, rest)) = bytes.split_first() {
        let size = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => string_len(rest),
            0x26 => {
                let key = string_len(rest);
                key + string_len(&rest[key..])
            }
            0x0B => varint(rest)?.1,
            other => bail!("unknown MQTT 5 property {other:#04x}"),
        };
        match id {
            0x11 => found.session_expiry = Some(u32::from_be_bytes(rest[..4].try_into()?)),
            0x23 => found.alias = Some(u16::from_be_bytes([rest[0], rest[1]])),
            _ => {}
        }
        bytes = &rest[size..];
    }
    Ok(found)
}

/// A variable byte integer: its value and its length.
fn varint(bytes: &[u8]) -> Result<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    bail!("bad variable byte integer")
}
