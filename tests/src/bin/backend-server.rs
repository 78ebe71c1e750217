//! A test backend: a real HTTP server (tiny_http) answering its name on
//! port 80, a UDP echo server answering its name on port 53, and a line
//! server on port 9000 for long-lived connections (each line is answered
//! with the name), and a stream on port 9100 (64 KiB chunks of zeros until
//! the client closes, for throughput). All listen on [::] (dual stack).
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};

fn main() {
    let name = std::env::args().nth(1).expect("usage: backend-server NAME");
    let udp_name = name.clone();
    std::thread::spawn(move || {
        let s = UdpSocket::bind("[::]:53").expect("bind udp [::]:53");
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(udp_name.as_bytes(), from);
            }
        }
    });
    let line_name = name.clone();
    std::thread::spawn(move || {
        let l = TcpListener::bind("[::]:9000").expect("bind tcp [::]:9000");
        for c in l.incoming().flatten() {
            let n = line_name.clone();
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                for line in BufReader::new(c).lines() {
                    if line.is_err() || writeln!(w, "{n}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let l = TcpListener::bind("[::]:9100").expect("bind tcp [::]:9100");
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let chunk = [0u8; 65536];
                while c.write_all(&chunk).is_ok() {}
            });
        }
    });
    let server = tiny_http::Server::http("[::]:80").expect("bind http [::]:80");
    for req in server.incoming_requests() {
        let _ = req.respond(tiny_http::Response::from_string(format!("{name}\n")));
    }
}
