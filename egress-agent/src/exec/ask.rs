//! `exec --ask`: the command's profile in ask mode, decided by the person at the terminal. With
//! a terminal on stdin each pending decision is a prompt on /dev/tty; without one, `exec`
//! serves the ask endpoints on its own root-only socket (in the directory the sandbox never
//! sees) and prints on stderr the commands that decide.

use std::{
    io::{BufRead, IsTerminal, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::broadcast::error::RecvError;

use crate::{
    ask::{Event, Scope, Shown, Verdict},
    attachment::Shared,
    control::pending::{approve_as, StandaloneFile},
};

/// Starts deciding for the exec: the prompt, or the socket and the printed commands. The
/// returned guard removes the socket when dropped.
pub fn start(file: Arc<StandaloneFile>) -> anyhow::Result<SocketGuard> {
    if std::io::stdin().is_terminal() {
        tokio::spawn(prompt_loop(file));
        return Ok(SocketGuard(None));
    }
    let dir = Path::new(crate::control::DEFAULT_SOCKET)
        .parent()
        .unwrap_or(Path::new("/run/egress-agent"));
    let sock = dir.join(format!("exec-{}.sock", std::process::id()));
    let listener = crate::control::bind(&sock)?;
    tokio::spawn(crate::control::serve_pending(
        listener,
        file.shared.clone(),
        file.clone(),
    ));
    tokio::spawn(print_loop(file.shared.clone(), sock.clone()));
    Ok(SocketGuard(Some(sock)))
}

pub struct SocketGuard(Option<PathBuf>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn describe(s: &Shown) -> String {
    let who = if s.comm.is_empty() {
        "a DNS question".to_string()
    } else {
        format!("{} (pid {})", s.comm, s.pid)
    };
    let port = s.port.map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{who} wants {}{port} ({}), denied by profile {}",
        s.name, s.protocol, s.profile
    )
}

async fn print_loop(shared: Arc<Shared>, sock: PathBuf) {
    let mut rx = shared.asks.subscribe();
    drop(shared);
    loop {
        match rx.recv().await {
            Ok(Event::Pending(s)) => eprintln!(
                "egress-agent: held {} (ask {id}); decide with: egress-agent --control {sock} approve {id} [--once|--session|--save]  or: egress-agent --control {sock} deny {id}",
                describe(&s),
                id = s.id,
                sock = sock.display()
            ),
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// One prompt at a time, in the order the decisions came.
async fn prompt_loop(file: Arc<StandaloneFile>) {
    let mut rx = file.shared.asks.subscribe();
    loop {
        let s = match rx.recv().await {
            Ok(Event::Pending(s)) => s,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        // Decided elsewhere, or given up, while an earlier prompt waited.
        if file.shared.asks.get(s.id).is_none() {
            continue;
        }
        let question = format!(
            "egress-agent: {} (rule \"{}\"). [o]nce, [s]ession, save to the file [w], [d]eny? ",
            describe(&s),
            s.rule
        );
        let answer = tokio::task::spawn_blocking(move || ask_tty(&question))
            .await
            .ok()
            .flatten();
        let by = crate::ask::operator();
        let scope = match answer.as_deref().map(str::trim) {
            Some("o" | "once" | "y" | "yes") => Some(Scope::Once),
            Some("s" | "session") => Some(Scope::Session),
            Some("w" | "save") => Some(Scope::Save),
            _ => None,
        };
        let said = match scope {
            Some(scope) => approve_as(&file.shared.asks, file.as_ref(), s.id, scope, by)
                .await
                .map(|_| format!("approved ({})", scope.as_str()))
                .map_err(|(_, e)| e),
            None => file
                .shared
                .asks
                .decide(s.id, Verdict::Denied { by })
                .map(|_| "denied".to_string())
                .map_err(|e| e.to_string()),
        };
        let _ = tell_tty(&match said {
            Ok(what) => format!("egress-agent: ask {}: {what}\n", s.id),
            Err(e) => format!("egress-agent: ask {}: {e}\n", s.id),
        });
    }
}

fn ask_tty(question: &str) -> Option<String> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    tty.write_all(question.as_bytes()).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(tty).read_line(&mut line).ok()?;
    Some(line)
}

fn tell_tty(text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/tty")?
        .write_all(text.as_bytes())
}
