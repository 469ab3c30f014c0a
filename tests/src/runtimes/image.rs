//! Container images built locally (no registry is reachable): a root filesystem of static busybox
//! and the harness's `probe` (with the shared libraries `ldd` names for it, copied from the host),
//! written either as a plain rootfs tar (`podman import`, `docker import`) or as a docker-archive
//! tarball (`ctr images import`, also `docker load` / `podman load`) with an image config.
//!
//! The tar crate writes the archives; the docker-archive layout (`manifest.json`, `<digest>.json`,
//! `<digest>/layer.tar`) is three small JSON documents, written here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bin_path;

/// The test image: busybox + probe, imported under this name by every harness.
pub const PROBE_IMAGE: &str = "localhost/egress-test/probe:1";
/// The CRI sandbox ("pause") image: busybox, an entrypoint that exits 0 on SIGTERM.
pub const PAUSE_IMAGE: &str = "localhost/egress-test/pause:1";
/// Where static busybox lives (Debian `busybox-static`).
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// busybox applets linked in the image's /bin.
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "printf", "ls", "mv", "rm", "true", "false", "nc", "wget",
    "nslookup", "ip", "id", "env", "ps",
];

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// The files of an image, by path inside it (no leading `/`).
pub struct ImageFiles {
    entries: BTreeMap<String, Entry>,
}

/// The image config's runtime part.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

impl ImageConfig {
    /// PATH=/bin and `entrypoint`.
    pub fn with_entrypoint(entrypoint: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: Vec::new(),
            env: vec!["PATH=/bin".into()],
        }
    }
    /// The pause image's: sleep until SIGTERM, then exit 0 (a shell trap, since PID 1 of a pid
    /// namespace ignores signals it has no handler for).
    pub fn pause() -> ImageConfig {
        ImageConfig::with_entrypoint(&[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
        ])
    }
}

impl ImageFiles {
    /// busybox, its applets, /etc basics (resolv.conf names the fake DNS), the usual empty dirs.
    pub fn busybox() -> ImageFiles {
        let mut img = ImageFiles {
            entries: BTreeMap::new(),
        };
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "var"] {
            img.add_dir(d);
        }
        img.add_host_file("bin/busybox", Path::new(BUSYBOX), 0o755);
        for a in APPLETS {
            img.add_symlink(&format!("bin/{a}"), "busybox");
        }
        img.add_bytes("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644);
        img.add_bytes("etc/group", b"root:x:0:\n", 0o644);
        img.add_bytes("etc/hosts", b"127.0.0.1 localhost\n", 0o644);
        img.add_bytes(
            "etc/resolv.conf",
            format!("nameserver {}\n", crate::addrs::DNS).as_bytes(),
            0o644,
        );
        img
    }

    /// [`busybox`](Self::busybox) + `/bin/probe` (debug info stripped into `workdir` when `strip`
    /// exists) + the shared libraries it needs, at the paths `ldd` reports.
    pub fn probe(workdir: &Path) -> ImageFiles {
        let mut img = ImageFiles::busybox();
        let probe = stripped_copy(&bin_path("probe"), workdir);
        img.add_host_file("bin/probe", &probe, 0o755);
        for lib in shared_libraries(&probe) {
            let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
            img.add_host_file(&inside, &lib, 0o755);
        }
        img
    }

    pub fn add_dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }
    fn add_parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.add_dir(parent);
        }
    }
    pub fn add_bytes(&mut self, path: &str, data: &[u8], mode: u32) {
        self.add_parent(path);
        self.entries.insert(
            path.to_string(),
            Entry::File {
                data: data.to_vec(),
                mode,
            },
        );
    }
    /// A host file's content (symlinks followed).
    pub fn add_host_file(&mut self, path: &str, src: &Path, mode: u32) {
        let data = std::fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        self.add_bytes(path, &data, mode);
    }
    pub fn add_symlink(&mut self, path: &str, target: &str) {
        self.add_parent(path);
        self.entries
            .insert(path.to_string(), Entry::Symlink(target.to_string()));
    }

    /// The root filesystem as an uncompressed tar (deterministic: uid/gid 0, mtime 0).
    pub fn layer_tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match entry {
                Entry::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())
                }
                Entry::File { data, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)
                }
            }
            .unwrap_or_else(|e| panic!("tar {path}: {e}"));
        }
        b.into_inner().expect("finish tar")
    }

    /// Writes the rootfs tar (for `podman import` / `docker import`).
    pub fn write_rootfs_tar(&self, out: &Path) -> PathBuf {
        std::fs::write(out, self.layer_tar())
            .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        out.to_path_buf()
    }

    /// Writes a single-layer docker-archive tarball named `tag` (for `ctr images import`).
    pub fn write_docker_archive(&self, out: &Path, tag: &str, config: &ImageConfig) -> PathBuf {
        let layer = self.layer_tar();
        let layer_digest = sha256_hex(&layer);
        let cfg = serde_json::json!({
            "architecture": oci_arch(),
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {
                "Entrypoint": config.entrypoint,
                "Cmd": config.cmd,
                "Env": config.env,
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "egress-tests image builder"}],
        })
        .to_string()
        .into_bytes();
        let cfg_digest = sha256_hex(&cfg);
        let manifest = serde_json::json!([{
            "Config": format!("{cfg_digest}.json"),
            "RepoTags": [tag],
            "Layers": [format!("{layer_digest}/layer.tar")],
        }])
        .to_string()
        .into_bytes();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, name, data)
                .unwrap_or_else(|e| panic!("tar {name}: {e}"));
        };
        add(&format!("{cfg_digest}.json"), &cfg);
        add(&format!("{layer_digest}/layer.tar"), &layer);
        add("manifest.json", &manifest);
        let bytes = b.into_inner().expect("finish tar");
        std::fs::write(out, bytes).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        out.to_path_buf()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// GOARCH spelling of this machine's architecture (image configs use it).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `src` without debug info, copied into `workdir` (the debug probe is ~45 MB, ~5 MB stripped);
/// `src` itself when `strip` is missing or fails.
fn stripped_copy(src: &Path, workdir: &Path) -> PathBuf {
    let dst = workdir.join(format!(
        "{}.stripped",
        src.file_name().unwrap().to_string_lossy()
    ));
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dst)
        .arg(src)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        dst
    } else {
        src.to_path_buf()
    }
}

/// The absolute paths of the shared libraries (and the ELF interpreter) `ldd` lists for `bin`;
/// empty for a static binary.
pub fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .expect("run ldd (libc-bin)");
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths_and_the_interpreter() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f4d)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4c)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f4e)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn layer_tar_lists_parents_before_children_and_keeps_symlinks() {
        let mut img = ImageFiles {
            entries: BTreeMap::new(),
        };
        img.add_bytes("lib/x86_64-linux-gnu/libc.so.6", b"elf", 0o755);
        img.add_symlink("bin/sh", "busybox");
        let tar = img.layer_tar();
        let mut a = tar::Archive::new(tar.as_slice());
        let names: Vec<(String, tar::EntryType)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("bin/".to_string(), tar::EntryType::Directory),
                ("bin/sh".to_string(), tar::EntryType::Symlink),
                ("lib/".to_string(), tar::EntryType::Directory),
                (
                    "lib/x86_64-linux-gnu/".to_string(),
                    tar::EntryType::Directory
                ),
                (
                    "lib/x86_64-linux-gnu/libc.so.6".to_string(),
                    tar::EntryType::Regular
                ),
            ]
        );
    }

    #[test]
    fn docker_archive_manifest_names_the_config_and_layer_by_digest() {
        let dir = std::env::temp_dir().join(format!("egress-img-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut img = ImageFiles {
            entries: BTreeMap::new(),
        };
        img.add_bytes("etc/hostname", b"x\n", 0o644);
        let out =
            img.write_docker_archive(&dir.join("a.tar"), "localhost/t:1", &ImageConfig::pause());
        let bytes = std::fs::read(&out).unwrap();
        let mut files = BTreeMap::new();
        for e in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(name, data);
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let cfg_name = manifest[0]["Config"].as_str().unwrap();
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "localhost/t:1");
        assert_eq!(format!("{}.json", sha256_hex(&files[cfg_name])), cfg_name);
        let cfg: serde_json::Value = serde_json::from_slice(&files[cfg_name]).unwrap();
        assert_eq!(
            cfg["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&files[layer_name]))
        );
        assert_eq!(cfg["config"]["Entrypoint"][0], "/bin/sh");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
