//! Container images as local programs.
//!
//! Two images are known, each reproducing what its real entrypoint would run:
//!
//! - `switchyard` (any registry and tag): the binary named by the basename of the container's
//!   `command` (`/usr/local/bin/switchyard-gateway` -> `target/<profile>/switchyard-gateway`),
//!   `args` after it. Its working directory is the Dockerfile's `WORKDIR /tmp`.
//! - `redis` (the dev overlay's `redis:7`): Debian's `redis-server`. The image's
//!   `docker-entrypoint.sh` runs `args` as a command when the first one is `redis-server`, and
//!   prepends `redis-server` when it is a flag. Working directory: the image's `/data`.
//!
//! A command run *inside* a container (an `exec` probe, a `preStop` hook) maps to: one of the
//! image's own programs (a Switchyard binary; `redis-server` / `redis-cli`), else the same absolute
//! path on this machine (`/bin/sleep`), else the program found on `PATH`.
//!
//! Where an image's default address means "this pod" it is made explicit, as the wildcard rule
//! of [`super::network`] would: `redis-server` listens on every interface unless told otherwise,
//! so it gets `--bind <pod IP>`; `redis-cli` connects to the pod's own loopback by default, so it
//! gets `-h <pod IP>`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use switchyard_testkit::redis::find_on_path;

use super::flags::{SWITCHYARD_IMAGE, image_name};

/// What the runner knows about an image.
#[derive(Debug, Clone)]
pub enum Image {
    Switchyard { bin_dir: PathBuf },
    Redis,
}

/// A program to start: path and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// The `PATH` of both images (Debian's default).
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Image {
    /// The image of a container reference, or an error naming the images the runner knows.
    pub fn of(reference: &str, bin_dir: &Path) -> Result<Image> {
        match image_name(reference) {
            SWITCHYARD_IMAGE => Ok(Image::Switchyard {
                bin_dir: bin_dir.to_path_buf(),
            }),
            "redis" => Ok(Image::Redis),
            other => bail!(
                "image {reference} ({other}) has no local equivalent; the runner knows \
                 `switchyard` (this workspace's binaries) and `redis` (Debian's redis-server)"
            ),
        }
    }

    /// The image's `WORKDIR`.
    pub fn workdir(&self) -> &'static str {
        match self {
            Image::Switchyard { .. } => "/tmp",
            Image::Redis => "/data",
        }
    }

    /// What the container's entrypoint runs, given its (expanded, translated) command and args.
    pub fn entrypoint(
        &self,
        command: &[String],
        args: &[String],
        pod_ip: Ipv4Addr,
    ) -> Result<Program> {
        match self {
            Image::Switchyard { bin_dir } => {
                let Some(program) = command.first() else {
                    bail!(
                        "a switchyard container must set `command` (the image's default CMD only \
                         prints placement's --help)"
                    );
                };
                let name = basename(program);
                let path = bin_dir.join(name);
                if !path.is_file() {
                    bail!(
                        "{} does not exist: build it (`cargo build --workspace --bins`, or \
                         `--release` for --release runs)",
                        path.display()
                    );
                }
                let mut all = command[1..].to_vec();
                all.extend_from_slice(args);
                Ok(Program { path, args: all })
            }
            Image::Redis => {
                let mut line: Vec<String> = command.iter().chain(args).cloned().collect();
                if line
                    .first()
                    .is_none_or(|a| a.starts_with('-') || a.ends_with(".conf"))
                {
                    line.insert(0, "redis-server".to_owned());
                }
                if basename(&line[0]) != "redis-server" {
                    return self.exec(&line, pod_ip);
                }
                let mut args = line[1..].to_vec();
                if !args.iter().any(|a| a == "--bind") {
                    args.extend(["--bind".to_owned(), pod_ip.to_string()]);
                }
                Ok(Program {
                    path: host_program("redis-server")?,
                    args,
                })
            }
        }
    }

    /// A command run inside the container (`exec` probe, `preStop` hook).
    pub fn exec(&self, command: &[String], pod_ip: Ipv4Addr) -> Result<Program> {
        let Some(program) = command.first() else {
            bail!("an exec action needs a command");
        };
        let name = basename(program);
        let mut args = command[1..].to_vec();
        let path = match self {
            Image::Switchyard { bin_dir } if bin_dir.join(name).is_file() => bin_dir.join(name),
            Image::Redis if name == "redis-server" || name == "redis-cli" => {
                if name == "redis-cli" && !args.iter().any(|a| a == "-h") {
                    args.splice(0..0, ["-h".to_owned(), pod_ip.to_string()]);
                }
                host_program(name)?
            }
            _ if Path::new(program).is_absolute() && Path::new(program).is_file() => {
                PathBuf::from(program)
            }
            _ => host_program(name)?,
        };
        Ok(Program { path, args })
    }
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn host_program(name: &str) -> Result<PathBuf> {
    match find_on_path(name) {
        Some(path) => Ok(path),
        None => bail!(
            "`{name}` is not installed on this machine; the local runner needs it (Debian: \
             `apt-get install redis-server` provides redis-server and redis-cli)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn redis_gets_the_pod_address_made_explicit() -> Result<()> {
        let ip = Ipv4Addr::new(127, 150, 2, 1);
        let server = Image::Redis.entrypoint(&[], &strings(&["redis-server", "--save", ""]), ip)?;
        assert!(server.path.ends_with("redis-server"));
        assert_eq!(
            server.args,
            strings(&["--save", "", "--bind", "127.150.2.1"])
        );
        let flags_only = Image::Redis.entrypoint(&[], &strings(&["--port", "1"]), ip)?;
        assert!(flags_only.path.ends_with("redis-server"));
        let cli = Image::Redis.exec(&strings(&["redis-cli", "ping"]), ip)?;
        assert_eq!(cli.args, strings(&["-h", "127.150.2.1", "ping"]));
        Ok(())
    }

    #[test]
    fn switchyard_runs_the_commands_basename_from_the_target_dir() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("sy-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("switchyard-gateway"), "")?;
        let image = Image::of("registry.example.com/switchyard:0.1.0", &dir)?;
        let program = image.entrypoint(
            &strings(&["/usr/local/bin/switchyard-gateway", "--a"]),
            &strings(&["--b"]),
            Ipv4Addr::LOCALHOST,
        )?;
        assert_eq!(program.path, dir.join("switchyard-gateway"));
        assert_eq!(program.args, strings(&["--a", "--b"]));
        let missing =
            image.entrypoint(&strings(&["/usr/local/bin/nope"]), &[], Ipv4Addr::LOCALHOST);
        assert!(missing.is_err());
        let sleep = image.exec(&strings(&["/bin/sleep", "5"]), Ipv4Addr::LOCALHOST)?;
        assert_eq!(sleep.path, PathBuf::from("/bin/sleep"));
        assert!(Image::of("nginx:1", &dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
