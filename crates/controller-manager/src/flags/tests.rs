use super::*;

fn parse(args: &[&str]) -> Flags {
    let mut all = vec!["csi-controller-manager"];
    all.extend_from_slice(args);
    Flags::try_parse_from(all).unwrap()
}

#[test]
fn upstream_sidecar_args_are_accepted() {
    let f = parse(&[
        "--csi-address=/csi/csi.sock",
        "--timeout=30s",
        "--leader-election",
        "--leader-election-namespace=kube-system",
        "--leader-election-lease-duration=20s",
        "--leader-election-renew-deadline=15s",
        "--leader-election-retry-period=3s",
        "--kube-api-qps=20",
        "--kube-api-burst=40",
        "--http-endpoint=:8080",
        "--worker-threads=5",
        "--retry-interval-start=2s",
        "--retry-interval-max=10m",
        "--v=5",
    ]);
    assert_eq!(f.csi_address, "/csi/csi.sock");
    assert_eq!(f.timeout, Duration::from_secs(30));
    assert!(f.leader_election);
    assert_eq!(f.leader_election_lease_duration, Duration::from_secs(20));
    assert_eq!(f.retry_interval_max, Duration::from_secs(600));
    assert_eq!(f.http_address(), Some(":8080"));
    assert_eq!(f.verbosity, Some(5));
    f.validate().unwrap();
}

#[test]
fn the_resizers_flags_and_feature_gates_are_accepted() {
    let f = parse(&[
        "--workers=7",
        "--resync-period=5m",
        "--handle-volume-inuse-error=false",
        "--feature-gates=AnnotateFsResize=false,RecoverVolumeExpansionFailure=true",
    ]);
    assert_eq!(f.worker_threads, Some(7));
    assert_eq!(f.resync, Duration::from_secs(300));
    assert!(!f.handle_volume_inuse_error);
    assert_eq!(f.gate("AnnotateFsResize"), Some(false));
    assert_eq!(f.gate("Topology"), None);
    f.validate().unwrap();
    let mut all = vec!["csi-controller-manager", "--feature-gates=Bogus=true"];
    let e = Flags::try_parse_from(&all).unwrap_err().to_string();
    assert!(e.contains("unrecognized feature gate: Bogus"), "{e}");
    all[1] = "--feature-gates=RecoverVolumeExpansionFailure=false";
    let off = Flags::try_parse_from(&all).unwrap();
    assert!(off.validate().unwrap_err().contains("cannot be turned off"));
}

#[test]
fn the_sidecars_other_flags_are_accepted() {
    let f = parse(&[
        "--master=https://10.0.0.1:6443",
        "--max-entries=100",
        "--logging-format=json",
        "--automaxprocs",
        "--enable-pprof=false",
        "--cloning-protection-threads=4",
        "--max-grpc-log-length=-1",
        "--logtostderr",
        "--vmodule=controller=5",
    ]);
    assert_eq!(f.master.as_deref(), Some("https://10.0.0.1:6443"));
    assert_eq!(f.max_entries, 100);
    assert_eq!(f.log_format, LogFormat::Json);
    assert_eq!(
        f.ignored(),
        vec![
            "--automaxprocs",
            "--cloning-protection-threads",
            "--enable-pprof",
            "--max-grpc-log-length",
            "--logtostderr",
            "--vmodule"
        ]
    );
    f.validate().unwrap();
}

#[test]
fn controllers_and_defaults() {
    let f = parse(&["--controllers=provisioner,attacher"]);
    assert_eq!(
        f.controllers,
        [ControllerKind::Provisioner, ControllerKind::Attacher]
    );
    let d = parse(&[]);
    assert!(d.controllers.is_empty());
    assert_eq!(d.workers(ControllerKind::Provisioner), 100);
    assert_eq!(d.workers(ControllerKind::Attacher), 10);
    let w = parse(&["--worker-threads=5"]);
    assert_eq!(w.workers(ControllerKind::Provisioner), 5);
    assert_eq!(w.workers(ControllerKind::Attacher), 5);
    let own = parse(&["--worker-threads=5", "--attacher-worker-threads=50"]);
    assert_eq!(own.workers(ControllerKind::Attacher), 50);
    assert_eq!(own.workers(ControllerKind::Resizer), 5);
    assert_eq!(
        parse(&["--resizer-worker-threads=3"]).workers(ControllerKind::Resizer),
        3
    );
    assert!(!d.leader_election);
    assert!(d.leader_election_release_on_cancel);
    assert_eq!(d.leader_election_renew_deadline, Duration::from_secs(10));
    assert!(Flags::try_parse_from(["x", "--controllers=bogus"]).is_err());
    assert!(Flags::try_parse_from(["x", "--timeout=10"]).is_err());
}

#[test]
fn invalid_combinations_are_refused() {
    assert!(
        parse(&["--http-endpoint=:1", "--metrics-address=:2"])
            .validate()
            .is_err()
    );
    let labels = parse(&["--leader-election-labels=a:b,c:d"]);
    assert_eq!(labels.lease_labels().unwrap().len(), 2);
    let bad = parse(&["--leader-election-labels=a:b,c"]);
    assert_eq!(
        bad.validate().unwrap_err(),
        "malformed item in list of labels: c"
    );
}

#[test]
fn the_group_snapshot_flags_are_upstreams() {
    let f = parse(&[
        "--groupsnapshot-name-prefix=grp",
        "--groupsnapshot-name-uuid-length=8",
        "--feature-gates=CSIVolumeGroupSnapshot=false",
    ]);
    f.validate().unwrap();
    assert_eq!(f.groupsnapshot_name_prefix, "grp");
    assert_eq!(f.gate("CSIVolumeGroupSnapshot"), Some(false));
    let d = parse(&[]);
    assert_eq!(d.groupsnapshot_name_prefix, "groupsnapshot");
    assert_eq!(d.groupsnapshot_name_uuid_length, -1);
    for bad in [
        vec!["--groupsnapshot-name-prefix="],
        vec!["--groupsnapshot-name-uuid-length=33"],
    ] {
        assert!(parse(&bad).validate().is_err(), "{bad:?}");
    }
}
