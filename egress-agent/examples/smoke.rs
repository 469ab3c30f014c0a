use egress_agent::{
    bpf,
    cgroup::Cgroup,
    netns::{Listeners, Netns},
};
fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap();
    let cg = Cgroup::open(std::path::Path::new(&path))?;
    let mut enf = bpf::Enforcement::attach(&cg)?;
    println!("attached adopted={} id={}", enf.adopted, cg.id);
    let l = Listeners::create(&Netns::current()?, 1)?;
    enf.configure(l.config())?;
    enf.sync_deny_set(
        [(
            "10.0.0.0/8".parse()?,
            bpf::maps::DenyValue {
                reason: 2,
                flags: 0,
            },
        )],
        [],
    )?;
    println!("{:?}", l.config());
    let t = enf.take_orig_dst()?;
    l.tcp4[0].set_nonblocking(false)?;
    let (s, peer) = l.tcp4[0].accept()?;
    let c = egress_agent::sys::netns_cookie(std::os::fd::AsRawFd::as_raw_fd(&s))?;
    let v = t.take(c, peer)?;
    println!(
        "peer {peer} -> {:?}",
        v.map(|v| (v.destination(), v.comm().to_string(), v.tgid, v.cgroup_id))
    );
    println!("counters {:?}", enf.counters()?);
    Ok(())
}
