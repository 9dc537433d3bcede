use super::*;

fn digest(n: u8) -> Digest {
    Digest::from_bytes([n; 32])
}

fn state() -> ImageState {
    ImageState { name: Name::parse("i").unwrap(), generation: 1, digest: digest(1) }
}

#[test]
fn roundtrip_and_limits() {
    let m = ToAgent::Chunk(vec![7; CHUNK]);
    let f = encode(&m).unwrap();
    let n = frame_len(f[..4].try_into().unwrap()).unwrap();
    assert_eq!(n, f.len() - 4);
    assert_eq!(decode::<ToAgent>(&f[4..]).unwrap(), m);
    assert!(matches!(encode(&ToAgent::Chunk(vec![0; MAX_FRAME])), Err(Error::TooLarge(_))));
    assert!(matches!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()), Err(Error::TooLarge(_))));
    assert!(matches!(decode::<ToAgent>(&[0xff, 0xff]), Err(Error::Malformed(_))));
    let mut f = encode(&ToAgent::Ping).unwrap();
    f.push(0);
    assert!(matches!(decode::<ToAgent>(&f[4..]), Err(Error::Malformed(_))));
}

#[test]
fn chunk_tags_are_each_directions_own() {
    // The tag each direction writes is the one its own `Chunk` variant has.
    assert_eq!(encode(&ToAgent::Chunk(Vec::new())).unwrap()[HEADER], ToAgent::CHUNK_TAG);
    assert_eq!(encode(&FromAgent::Chunk(Vec::new())).unwrap()[HEADER], FromAgent::CHUNK_TAG);
    let f = encode(&FromAgent::Chunk(vec![1, 2])).unwrap();
    assert_eq!(chunk_data::<FromAgent>(&f[HEADER..]), Some(&[1u8, 2][..]));
    assert_eq!(chunk_data::<ToAgent>(&f[HEADER..]), None, "an agent's chunk is not a controller's");
}

#[test]
fn chunk_prefix_matches_encode() {
    for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, CHUNK] {
        let data = vec![5u8; n];
        let mut f = chunk_prefix::<ToAgent>(n).unwrap();
        f.extend_from_slice(&data);
        assert_eq!(f, encode(&ToAgent::Chunk(data.clone())).unwrap(), "{n}");
        let mut f = chunk_prefix::<FromAgent>(n).unwrap();
        f.extend_from_slice(&data);
        assert_eq!(f, encode(&FromAgent::Chunk(data)).unwrap(), "{n}");
    }
    assert!(chunk_prefix::<ToAgent>(MAX_FRAME).is_err());
    for n in [0usize, 1, 200, CHUNK] {
        let f = encode(&ToAgent::Chunk(vec![9u8; n])).unwrap();
        assert_eq!(chunk_data::<ToAgent>(&f[HEADER..]).map(<[u8]>::len), Some(n));
    }
    assert_eq!(chunk_data::<ToAgent>(&encode(&ToAgent::BlobEnd).unwrap()[HEADER..]), None);
    let mut f = encode(&ToAgent::Chunk(vec![1, 2, 3])).unwrap();
    f.pop();
    assert_eq!(chunk_data::<ToAgent>(&f[HEADER..]), None, "a short chunk is not data");
}

#[test]
fn variant_numbers_never_move() {
    // postcard writes the variant index: older peers' messages must keep their numbers.
    assert_eq!(encode(&ToAgent::Bye).unwrap()[HEADER], 12);
    let m = ToAgent::StateliteOpen(req::StateliteOpen {
        root: AbsPath::parse("/nodedata").unwrap(),
        node: Name::parse("cn001").unwrap(),
    });
    assert_eq!(encode(&m).unwrap()[HEADER], 13);
    let m = ToAgent::StateliteRead(req::StateliteRead { path: b"etc/x".to_vec() });
    assert_eq!(encode(&m).unwrap()[HEADER], 15);
    assert_eq!(encode(&FromAgent::Error { reason: String::new() }).unwrap()[HEADER], 10);
    assert_eq!(encode(&FromAgent::Content(reply::Content { len: 5 })).unwrap()[HEADER], 11);
    let m = FromAgent::NoSpace { path: "/x".into(), reason: "ENOSPC".into() };
    assert_eq!(encode(&m).unwrap()[HEADER], 12);
    let m = FromAgent::Opened(reply::Opened { state: state(), drifted: None });
    assert_eq!(encode(&m).unwrap()[HEADER], 3);
    // The read-write areas' status, appended after the takeover's.
    assert_eq!(encode(&ToAgent::StateliteRwStatus).unwrap()[HEADER], 18);
    let a = reply::RwArea {
        area: AbsPath::parse("/nodedata").unwrap(),
        role: "primary".into(),
        protected: false,
        reason: Some("backup away".into()),
        lag_ms: 1500,
        lag_bytes: 4096,
        last_reconcile: None,
        last_reconcile_ok: None,
        last_reconcile_result: None,
    };
    let m = FromAgent::StateliteRw(reply::StateliteRw { areas: vec![a] });
    let f = encode(&m).unwrap();
    assert_eq!(f[HEADER], 15);
    assert_eq!(decode::<FromAgent>(&f[HEADER..]).unwrap(), m);
    // The kernel-nfsd areas' copy state, appended after it.
    assert_eq!(encode(&ToAgent::StateliteKernelStatus).unwrap()[HEADER], 19);
    let k = reply::KernelArea {
        area: AbsPath::parse("/nodedata").unwrap(),
        role: "backup".into(),
        connected: true,
        lag_ms: 0,
        lag_bytes: 0,
        in_sync_at_ms: Some(1_700_000_000_250),
        nodes: vec!["cn001".into()],
    };
    let m = FromAgent::StateliteKernel(reply::StateliteKernel { areas: vec![k] });
    let f = encode(&m).unwrap();
    assert_eq!(f[HEADER], 16);
    assert_eq!(decode::<FromAgent>(&f[HEADER..]).unwrap(), m);
    // Relay fan-out, appended after them.
    let m = ToAgent::ExpectRelay(req::ExpectRelay {
        token: [1; 32],
        child: Name::parse("sn2").unwrap(),
        image: Name::parse("img").unwrap(),
        generation: 4,
    });
    let f = encode(&m).unwrap();
    assert_eq!(f[HEADER], 20);
    assert_eq!(decode::<ToAgent>(&f[HEADER..]).unwrap(), m);
    let m = ToAgent::Fetch(req::Fetch {
        parent: Name::parse("sn1").unwrap(),
        addr: "10.0.0.1".into(),
        port: 7469,
        token: [2; 32],
        indexes: vec![0, 5],
        stall_ms: 10_000,
    });
    let f = encode(&m).unwrap();
    assert_eq!(f[HEADER], 21);
    assert_eq!(decode::<ToAgent>(&f[HEADER..]).unwrap(), m);
    assert_eq!(encode(&FromAgent::RelayReady(reply::RelayReady { port: 1 })).unwrap()[HEADER], 17);
    let m = FromAgent::Fetched(reply::Fetched { missing: vec![3], bytes: 9 });
    assert_eq!(encode(&m).unwrap()[HEADER], 18);
    // The relayed shared plan, appended after them.
    let m = ToAgent::RelayedPlan(req::RelayedPlan {
        len: 350_000,
        blake3: digest(7),
        zstd: true,
        generation: 4,
        parent: Name::parse("sn1").unwrap(),
        addr: "10.0.0.1".into(),
        port: 7469,
        token: [2; 32],
        stall_ms: 10_000,
        wait_ms: 60_000,
    });
    let f = encode(&m).unwrap();
    assert_eq!(f[HEADER], 22);
    assert_eq!(decode::<ToAgent>(&f[HEADER..]).unwrap(), m);
    let m = ToAgent::FetchPending(req::FetchPending {
        parent: Name::parse("sn1").unwrap(),
        addr: "10.0.0.1".into(),
        port: 7469,
        token: [2; 32],
        stall_ms: 10_000,
    });
    let f = encode(&m).unwrap();
    assert_eq!(f[HEADER], 23);
    assert_eq!(decode::<ToAgent>(&f[HEADER..]).unwrap(), m);
    let m = FromAgent::PlanMissing(reply::PlanMissing { reason: "parent gone".into() });
    let f = encode(&m).unwrap();
    assert_eq!(f[HEADER], 19);
    assert_eq!(decode::<FromAgent>(&f[HEADER..]).unwrap(), m);
    use crate::relay::{FromRelay, ToRelay};
    let f = encode(&ToRelay::GetPlan { blake3: digest(7) }).unwrap();
    assert_eq!(f[HEADER], 4);
    assert_eq!(encode(&FromRelay::Plan { len: 3 }).unwrap()[HEADER], 7);
    assert_eq!(encode(&FromRelay::PlanMissing).unwrap()[HEADER], 8);
}

#[test]
fn a_relayed_plan_is_answered_by_need_or_plan_missing_and_nothing_else() {
    let need = reply::Need { indexes: vec![1, 2], resumed: 0 };
    let r = reply::PlanRelayed::from_msg(FromAgent::Need(need.clone())).unwrap();
    assert_eq!(r, reply::PlanRelayed::Need(need));
    let gone = reply::PlanMissing { reason: "gone".into() };
    let r = reply::PlanRelayed::from_msg(FromAgent::PlanMissing(gone.clone())).unwrap();
    assert_eq!(r, reply::PlanRelayed::Missing(gone));
    let e = reply::PlanRelayed::from_msg(FromAgent::Pong).unwrap_err();
    assert_eq!(e.to_string(), "protocol violation: expected Need or PlanMissing, got Pong");
    let e = reply::PlanRelayed::from_msg(FromAgent::Error { reason: "no".into() }).unwrap_err();
    assert!(matches!(e, Error::Remote(r) if r == "no"));
    // Need is what a plain Plan still gets, and PlanMissing is no Need.
    assert!(reply::Need::from_msg(FromAgent::PlanMissing(reply::PlanMissing { reason: String::new() })).is_err());
}

#[test]
fn digests_are_hex_strings_on_the_wire() {
    let d = digest(0xab);
    let s = d.to_string();
    assert_eq!(s, "ab".repeat(32));
    assert_eq!(s.parse::<Digest>().unwrap(), d);
    // The same bytes as the string it replaced.
    assert_eq!(postcard::to_stdvec(&d).unwrap(), postcard::to_stdvec(&s).unwrap());
    for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
        assert!(bad.parse::<Digest>().is_err(), "{bad:?}");
    }
    let f = postcard::to_stdvec(&"not hex".to_string()).unwrap();
    assert!(decode::<Digest>(&f).is_err());
}

#[test]
fn names_and_paths_are_checked_while_decoding_and_the_reason_kept() {
    // Encoded as plain strings (what a hostile peer can send).
    #[derive(Serialize)]
    enum Raw {
        _Hello,
        _Ping,
        _Status,
        Open { image: String, path: String },
    }
    let open = |image: &str, path: &str| {
        let f = encode(&Raw::Open { image: image.into(), path: path.into() }).unwrap();
        decode::<ToAgent>(&f[HEADER..])
    };
    let ok = open("rh8-compute_1.2", "netboot/rh8/x86_64/compute/rootimg").unwrap();
    assert!(matches!(ok, ToAgent::Open(req::Open { .. })));
    for (image, path, why) in [
        ("x", "../../escape", "`..`"),
        ("x", "/etc", "absolute"),
        ("x", "a//b", "empty component"),
        ("x", "a\0b", "NUL"),
        ("../x", "a", "name refused"),
        (".hidden", "a", "starts with `.`"),
        ("a b", "a", "contains ` `"),
    ] {
        match open(image, path) {
            Err(Error::Malformed(m)) => assert!(m.contains(why), "{image:?} {path:?}: {m}"),
            other => panic!("{image:?} {path:?}: {other:?}"),
        }
    }
}

#[test]
fn each_request_pairs_with_one_reply_and_remote_errors_are_typed() {
    fn take<R: Request>(_: R, m: FromAgent) -> Result<R::Reply, Error> {
        R::Reply::from_msg(m)
    }
    let opened = FromAgent::Opened(reply::Opened { state: state(), drifted: None });
    assert!(take(req::Open { image: Name::parse("i").unwrap(), path: RelPath::parse("i").unwrap() }, opened.clone())
        .is_ok());
    match take(req::Commit, opened) {
        Err(Error::Unexpected { expected: "Committed", got: "Opened" }) => {}
        other => panic!("{other:?}"),
    }
    match take(req::Verify, FromAgent::Error { reason: "scanning: EIO".into() }) {
        Err(Error::Remote(r)) => assert_eq!(r, "scanning: EIO"),
        other => panic!("{other:?}"),
    }
    match take(req::Commit, FromAgent::NoSpace { path: "/s".into(), reason: "ENOSPC".into() }) {
        Err(e @ Error::NoSpace { .. }) => assert!(!e.is_violation()),
        other => panic!("{other:?}"),
    }
    assert!(take(req::Ping, FromAgent::Pong).is_ok());
    assert!(take(req::Ping, FromAgent::Chunk(vec![0; 10])).unwrap_err().is_violation());
}

#[test]
fn takeover_requests_are_appended_and_their_address_checked() {
    let claim = ToAgent::Claim(req::Claim { address: "10.0.1.101/24".into() });
    let f = encode(&claim).unwrap();
    assert_eq!(f[HEADER], 16, "Claim comes after StateliteRead");
    assert_eq!(decode::<ToAgent>(&f[HEADER..]).unwrap(), claim);
    let release = ToAgent::Release(req::Release { address: "fd00::65/64".into() });
    let f = encode(&release).unwrap();
    assert_eq!(f[HEADER], 17);
    assert_eq!(decode::<ToAgent>(&f[HEADER..]).unwrap(), release);
    for bad in ["10.0.1.101", "10.0.1.101/33", "eth0", "", "fd00::65/129"] {
        let f = encode(&ToAgent::Claim(req::Claim { address: bad.into() })).unwrap();
        match decode::<ToAgent>(&f[HEADER..]) {
            Err(Error::Malformed(m)) => assert!(m.contains("address refused"), "{bad:?}: {m}"),
            other => panic!("{bad:?} decoded: {other:?}"),
        }
        let f = encode(&ToAgent::Release(req::Release { address: bad.into() })).unwrap();
        assert!(matches!(decode::<ToAgent>(&f[HEADER..]), Err(Error::Malformed(_))), "{bad:?}");
    }
    let long = "1".repeat(1000);
    let f = encode(&ToAgent::Claim(req::Claim { address: long })).unwrap();
    let Err(Error::Malformed(m)) = decode::<ToAgent>(&f[HEADER..]) else { panic!("a long address decoded") };
    assert!(m.len() < 200, "{m}");
    let m = FromAgent::Claimed(reply::Claimed { change: "added".into(), announced: true, detail: String::new() });
    assert_eq!(encode(&m).unwrap()[HEADER], 13);
    assert_eq!(encode(&FromAgent::Released(reply::Released { change: "removed".into() })).unwrap()[HEADER], 14);
    // Each request is answered by its own reply; another kind is a violation.
    let r = <reply::Claimed as Reply>::from_msg(FromAgent::Released(reply::Released { change: "absent".into() }));
    assert!(matches!(r, Err(Error::Unexpected { expected: "Claimed", got: "Released" })));
    let r = <reply::Released as Reply>::from_msg(FromAgent::Error { reason: "no interface".into() });
    assert!(matches!(r, Err(Error::Remote(m)) if m == "no interface"));
}
