//! [`Launcher`]: how a process servlet starts its worker processes (the
//! program, its arguments and environment, a hook per worker), and the
//! servlet's other start-up settings. The protocol that follows the start is
//! in `spawn.rs` (parent) and `boot.rs` (child).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::image::StartHook;
use crate::affinity::CpuAffinity;

/// A process servlet's settings for starting its worker processes.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpawnOptions {
    pub(crate) launcher: Launcher,
    /// Run in each worker process before the worker's `init`.
    pub(crate) start_hook: Option<StartHook>,
    /// Capture backtraces of worker errors and panics.
    pub(crate) backtraces: bool,
}

/// Which worker process is being spawned; given to [`Launcher::command_hook`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerSpawn {
    /// The worker's index within its servlet.
    pub index: usize,
    /// The servlet's worker name.
    pub name: String,
    /// The CPUs the worker will be pinned to.
    pub cpus: CpuAffinity,
}

type CommandHook = Arc<dyn Fn(&mut Command, &WorkerSpawn) + Send + Sync>;

/// A worker process as the server holds it: a child it spawned
/// ([`std::process::Child`]), or a process a [`ProcessStarter`] started for
/// it (e.g. forked by a fork server, whose parent is not the server).
///
/// The server kills, polls and reaps its workers only through this trait.
/// An implementation must keep the process's pid reserved (not reaped by
/// anyone else) until [`wait`](WorkerProcess::wait) or
/// [`try_wait`](WorkerProcess::try_wait) has returned its status, so that
/// [`kill`](WorkerProcess::kill) can never reach another process.
pub trait WorkerProcess: Send {
    /// The process id.
    fn id(&self) -> u32;
    /// Kills the process (`SIGKILL`); `Ok` if it has already exited.
    fn kill(&mut self) -> io::Result<()>;
    /// The exit status if the process has exited (and reaps it), else `None`.
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>>;
    /// Waits for the process to exit and reaps it.
    fn wait(&mut self) -> io::Result<ExitStatus>;
}

impl fmt::Debug for dyn WorkerProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("pid", &self.id())
            .finish()
    }
}

impl WorkerProcess for Child {
    fn id(&self) -> u32 {
        Child::id(self)
    }
    fn kill(&mut self) -> io::Result<()> {
        Child::kill(self)
    }
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        Child::try_wait(self)
    }
    fn wait(&mut self) -> io::Result<ExitStatus> {
        Child::wait(self)
    }
}

/// Starts worker processes by other means than spawning the launcher's
/// command: e.g. a fork server, a pre-started single-threaded process that
/// forks each worker on request (see [`Launcher::starter`]).
///
/// The started process must run the launcher's worker loop with the
/// request's socket as its stdin and the request's environment
/// ([`StartRequest::env`]); the server then speaks the same handshake with it
/// as with a spawned one, and supervises it through the returned
/// [`WorkerProcess`]. Its parent must be the process named in that
/// environment, and it should die with that parent
/// (`PR_SET_PDEATHSIG`, which the worker loop sets itself); the starter is
/// responsible for the parent dying with the server.
pub trait ProcessStarter: Send + Sync {
    /// Starts one worker process; `Ok(None)` if this starter cannot (e.g. its
    /// fork server died): the server then spawns the launcher's command as
    /// if there were no starter.
    fn start(&self, req: &StartRequest<'_>) -> io::Result<Option<Box<dyn WorkerProcess>>>;
}

/// What a [`ProcessStarter`] is asked to start.
#[derive(Debug)]
#[non_exhaustive]
pub struct StartRequest<'a> {
    /// Which worker.
    pub who: &'a WorkerSpawn,
    /// The worker's end of its connection to the server: the started process
    /// must have it as its stdin (the starter passes it on, e.g. with
    /// `SCM_RIGHTS`; the server closes its copy afterwards).
    pub socket: BorrowedFd<'a>,
    pub(super) token: u64,
    pub(super) re_exec: bool,
    pub(super) launcher_env: &'a [(OsString, Option<OsString>)],
}

impl StartRequest<'_> {
    /// The environment changes the started process needs: the launcher's
    /// variables ([`Launcher::env`], `None` for a removed one) and the
    /// variable that marks it as this server's worker, naming `parent_pid`
    /// (the pid of the process that will be its parent) as the process it
    /// must check is its parent.
    pub fn env(&self, parent_pid: u32) -> Vec<(OsString, Option<OsString>)> {
        let var = WorkerVar {
            ppid: parent_pid as i32,
            token: self.token,
            re_exec: self.re_exec,
        };
        let mut env = self.launcher_env.to_vec();
        env.push((OsString::from(ENV), Some(OsString::from(var.render()))));
        env
    }
}

/// Environment variable that marks a worker process.
pub(crate) const ENV: &str = "MPSERVER_WORKER";

/// What `MPSERVER_WORKER` says: `<server pid>:<token>:<mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerVar {
    pub(crate) ppid: i32,
    pub(crate) token: u64,
    /// Re-exec (`x`): the process finds its entry by itself before `main`;
    /// program (`p`): the program calls `serve_worker`.
    pub(crate) re_exec: bool,
}

impl WorkerVar {
    pub(crate) fn render(&self) -> String {
        let mode = if self.re_exec { 'x' } else { 'p' };
        format!("{}:{}:{mode}", self.ppid, self.token)
    }

    pub(super) fn parse(var: &str) -> Option<Self> {
        let mut it = var.split(':');
        let ppid = it.next()?.parse().ok()?;
        let token = it.next()?.parse().ok()?;
        let re_exec = match it.next()? {
            "x" => true,
            "p" => false,
            _ => return None,
        };
        it.next().is_none().then_some(WorkerVar {
            ppid,
            token,
            re_exec,
        })
    }
}

/// How a [`ProcessServlet`](crate::ProcessServlet) starts its worker
/// processes.
///
/// The default re-executes the running binary, which finds its worker by
/// itself (see [`crate::init`]). [`Launcher::program`] starts another program
/// instead, which must call [`serve_worker::<W>()`](super::serve_worker) for
/// the servlet's worker type `W`: for example a Python interpreter whose
/// extension module defines the worker type, or a separate worker binary.
/// Either way the worker's stdin is its connection to the server, and its
/// stdout and stderr are the server's.
///
/// Arguments, `argv[0]`, environment and a hook that edits the
/// [`Command`] of each worker (e.g. per-index environment) apply to both.
///
/// ```
/// use mpserver::servlet::process::Launcher;
///
/// // The default, with an extra variable and a per-worker one.
/// let launcher = Launcher::default()
///     .env("OMP_NUM_THREADS", "1")
///     .command_hook(|cmd, w| {
///         cmd.env("CUDA_VISIBLE_DEVICES", w.index.to_string());
///     });
/// # let _ = launcher;
///
/// // A Python interpreter that serves the worker type of an extension module.
/// let python = Launcher::program("python3")
///     .args(["-c", "import mypkg._native as m; m._worker_main()"]);
/// # let _ = python;
/// ```
#[derive(Clone)]
pub struct Launcher {
    pub(super) program: Option<OsString>,
    pub(super) args: Vec<OsString>,
    pub(super) arg0: Option<OsString>,
    pub(super) env: Vec<(OsString, Option<OsString>)>,
    pub(super) same_image: bool,
    pub(super) handshake_timeout: Duration,
    pub(super) hooks: Vec<CommandHook>,
    pub(super) starter: Option<Arc<dyn ProcessStarter>>,
}

impl Default for Launcher {
    fn default() -> Self {
        Launcher {
            program: None,
            args: Vec::new(),
            arg0: None,
            env: Vec::new(),
            same_image: false,
            handshake_timeout: Duration::from_secs(10),
            hooks: Vec::new(),
            starter: None,
        }
    }
}

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("arg0", &self.arg0)
            .field("env", &self.env)
            .field("same_image", &self.same_image)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("command_hooks", &self.hooks.len())
            .field("starter", &self.starter.is_some())
            .finish()
    }
}

impl Launcher {
    /// The default: re-execute the running binary (`/proc/self/exe`, the
    /// very image the server runs even if the file was replaced), named
    /// `"<name>#<index> [mpserver worker]"` in `ps`.
    pub fn re_exec() -> Self {
        Launcher::default()
    }

    /// Start `program` (looked up in `PATH` if it has no `/`), which must call
    /// [`serve_worker::<W>()`](super::serve_worker) for the servlet's worker
    /// type, directly in the spawned process (a wrapper must `exec` it: the
    /// worker checks that its parent is the server).
    pub fn program(program: impl AsRef<OsStr>) -> Self {
        Launcher {
            program: Some(program.as_ref().to_owned()),
            ..Launcher::default()
        }
    }

    /// Whether this launcher re-executes the running binary.
    pub fn is_re_exec(&self) -> bool {
        self.program.is_none()
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets `argv[0]` (default: the worker's display name for re-exec, the
    /// program for [`Launcher::program`]).
    pub fn arg0(mut self, arg0: impl AsRef<OsStr>) -> Self {
        self.arg0 = Some(arg0.as_ref().to_owned());
        self
    }

    /// Sets an environment variable in every worker process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable from every worker process.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// How long the server waits for a new process to answer the handshake
    /// (default 10 s). This bounds only the start of the process up to the
    /// point where it takes the connection, not the worker's `init`. A
    /// process that does not answer in time is killed and the start fails.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// For [`Launcher::program`]: require that the child's mpserver code is
    /// loaded from the same file as the server's (its executable or shared
    /// library: device, inode, size and modification time), e.g. the same
    /// Python extension module. The re-exec launcher always requires it.
    pub fn require_same_image(mut self, yes: bool) -> Self {
        self.same_image = yes;
        self
    }

    /// Adds a hook that edits the command of each worker process before it
    /// is spawned (environment, arguments, working directory, …), given the
    /// worker's index, name and CPUs. Hooks run in the server process, in
    /// the order added, after the launcher's own arguments and environment.
    /// The server sets the worker's stdin (its connection), its process
    /// group and the `MPSERVER_WORKER` variable after the hooks; stdout and
    /// stderr are the server's unless a hook redirects them.
    pub fn command_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut Command, &WorkerSpawn) + Send + Sync + 'static,
    {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Starts worker processes with `starter` (e.g. a fork server) instead
    /// of spawning this launcher's command; the command (program, arguments,
    /// `argv[0]`, hooks) is still what runs whenever the starter cannot
    /// start a process (it returns `Ok(None)`). Command hooks do not apply
    /// to processes the starter starts.
    pub fn starter(mut self, starter: Arc<dyn ProcessStarter>) -> Self {
        self.starter = Some(starter);
        self
    }

    pub(super) fn command(&self, display_name: &str, who: &WorkerSpawn) -> Command {
        let mut cmd = match &self.program {
            None => {
                let mut c = Command::new("/proc/self/exe");
                c.arg0(display_name);
                c
            }
            Some(p) => Command::new(p),
        };
        if let Some(a) = &self.arg0 {
            cmd.arg0(a);
        }
        // The server's own, unless a hook redirects them.
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        cmd.args(&self.args);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        for hook in &self.hooks {
            hook(&mut cmd, who);
        }
        cmd
    }
}

impl<W> super::ProcessServlet<W> {
    /// How worker processes are started (default: the running binary
    /// re-executed; see [`Launcher`]).
    pub fn launcher(mut self, launcher: Launcher) -> Self {
        self.spawn.launcher = launcher;
        self
    }

    /// A function run in every worker process before the worker's
    /// [`init`](crate::Worker::init), with the worker's context (its index,
    /// name and CPUs): set per-worker environment (`CUDA_VISIBLE_DEVICES`,
    /// thread counts of math libraries), install a `tracing` subscriber,
    /// raise limits. An `Err` (or a panic) fails the worker's start as
    /// `init` would.
    ///
    /// It must be a plain function, not a closure: the worker process finds
    /// it the way it finds its worker, by its place in the executable, so it
    /// works with the default re-exec [`Launcher`] only (with
    /// [`Launcher::program`] the start fails; do such set-up in the program,
    /// or set environment with [`Launcher::command_hook`]). When the hook
    /// runs, the worker process has a single thread (unless code run before
    /// `main` started others), so `std::env::set_var` is sound there.
    ///
    /// ```
    /// use mpserver::{ProcessServlet, Server, WorkerContext, WorkerError};
    /// # use mpserver::Worker;
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Device;
    /// # impl Worker for Device {
    /// #     type Input = ();
    /// #     type Output = Option<String>;
    /// #     fn call(&mut self, _: ()) -> Result<Option<String>, WorkerError> {
    /// #         Ok(std::env::var("CUDA_VISIBLE_DEVICES").ok())
    /// #     }
    /// # }
    ///
    /// fn pick_gpu(ctx: &WorkerContext) -> Result<(), WorkerError> {
    ///     // SAFETY: the worker process has one thread when the hook runs.
    ///     unsafe { std::env::set_var("CUDA_VISIBLE_DEVICES", ctx.worker_index().to_string()) };
    ///     Ok(())
    /// }
    ///
    /// # fn main() {
    /// let server = Server::start(ProcessServlet::new(Device).on_worker_start(pick_gpu)).unwrap();
    /// assert_eq!(server.call(()).unwrap().as_deref(), Some("0"));
    /// # }
    /// ```
    pub fn on_worker_start(
        mut self,
        hook: fn(&crate::WorkerContext) -> Result<(), crate::WorkerError>,
    ) -> Self {
        self.spawn.start_hook = Some(hook);
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{ProcessServlet, Server, Worker, WorkerError};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Lineage;

    impl Worker for Lineage {
        type Input = ();
        type Output = (u32, u32, Option<String>);
        fn call(&mut self, _: ()) -> Result<Self::Output, WorkerError> {
            Ok((
                std::process::id(),
                nix::unistd::getppid().as_raw() as u32,
                std::env::var("LAUNCHER_TEST").ok(),
            ))
        }
    }

    /// Starts the worker itself (as a fork server would, but by spawning),
    /// or declines.
    struct ByHand {
        calls: AtomicUsize,
        decline: bool,
    }

    impl ProcessStarter for ByHand {
        fn start(&self, req: &StartRequest<'_>) -> io::Result<Option<Box<dyn WorkerProcess>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.decline {
                return Ok(None);
            }
            let mut cmd = Command::new("/proc/self/exe");
            for (k, v) in req.env(std::process::id()) {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            cmd.stdin(Stdio::from(req.socket.try_clone_to_owned()?));
            Ok(Some(Box::new(cmd.spawn()?)))
        }
    }

    fn run(decline: bool) -> (usize, Vec<(u32, u32, Option<String>)>) {
        let starter = Arc::new(ByHand {
            calls: AtomicUsize::new(0),
            decline,
        });
        let launcher = Launcher::default()
            .env("LAUNCHER_TEST", "yes")
            .starter(starter.clone());
        let servlet = ProcessServlet::new(Lineage).workers(2).launcher(launcher);
        let server = Server::start(servlet).unwrap();
        let out = (0..8).map(|_| server.call(()).unwrap()).collect();
        drop(server);
        (starter.calls.load(Ordering::SeqCst), out)
    }

    /// A starter's processes are supervised like spawned ones and get the
    /// launcher's environment.
    #[test]
    fn a_starter_starts_the_workers() {
        let (calls, out) = run(false);
        assert_eq!(calls, 2);
        for (pid, ppid, var) in out {
            assert_ne!(pid, std::process::id());
            assert_eq!(ppid, std::process::id());
            assert_eq!(var.as_deref(), Some("yes"));
        }
    }

    /// A starter that declines has the launcher's command spawned instead.
    #[test]
    fn a_declining_starter_falls_back_to_spawning() {
        let (calls, out) = run(true);
        assert_eq!(calls, 2);
        assert!(
            out.iter()
                .all(|(_, ppid, var)| *ppid == std::process::id() && var.as_deref() == Some("yes"))
        );
    }
}
