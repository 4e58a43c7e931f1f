//! Data-parallel pretraining on PyTorch's own distributed engine: c10d's TCPStore rendezvous and
//! ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA) collectives inside libtorch, reached through `csrc/dist.cpp` (tch wraps none
//! of c10d). Ranks are configured like torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
//! MASTER_PORT) or started locally by `pretrain --nproc N`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

/// Which c10d process group carries the collectives.
#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// NCCL when the run is on CUDA and this build has it, else Gloo (PyTorch's advice).
    Auto,
    Gloo,
    Nccl,
}

impl DistBackend {
    pub fn name(self) -> &'static str {
        match self {
            DistBackend::Auto => "auto",
            DistBackend::Gloo => "gloo",
            DistBackend::Nccl => "nccl",
        }
    }

    /// The concrete backend for a run on `device`, or why it cannot be had.
    pub fn resolve(self, device: Device) -> Result<DistBackend> {
        let built = cfg!(moco_nccl);
        match self {
            DistBackend::Auto if device.is_cuda() && built => Ok(DistBackend::Nccl),
            DistBackend::Auto | DistBackend::Gloo => Ok(DistBackend::Gloo),
            DistBackend::Nccl if !device.is_cuda() => bail!(
                "--dist-backend nccl: NCCL runs on CUDA devices and this run is on {device:?} \
                 (use --dist-backend gloo on the CPU)"
            ),
            DistBackend::Nccl if !built => bail!(
                "--dist-backend nccl: this moco-train was built without NCCL (the CUDA and NCCL \
                 headers of scripts/setup.sh were missing); use --dist-backend gloo"
            ),
            DistBackend::Nccl => Ok(DistBackend::Nccl),
        }
    }
}

/// Where this process sits in the job, from torchrun's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already hosts the store on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE).
    pub agent_store: bool,
}

impl DistEnv {
    /// None when WORLD_SIZE is unset or 1 (a plain single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |k: &str, v: &str| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{k}={v}: not a non-negative integer"))
        };
        let world = num("WORLD_SIZE", &world)?;
        if world <= 1 {
            return Ok(None);
        }
        let rank = num(
            "RANK",
            &var("RANK").context("WORLD_SIZE is set but RANK is not")?,
        )?;
        if rank >= world {
            bail!("RANK={rank} is not below WORLD_SIZE={world}");
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = port
            .parse()
            .with_context(|| format!("MASTER_PORT={port}: not a port number"))?;
        Ok(Some(DistEnv {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
        }))
    }

    /// A group of one rank on a store of its own (any free port): the collectives run for real,
    /// as a check of the backend, and change nothing.
    pub fn single() -> DistEnv {
        DistEnv {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
            agent_store: false,
        }
    }
}

#[cfg(moco_gloo)]
mod ffi {
    use std::os::raw::{c_char, c_int, c_void};
    extern "C" {
        pub fn moco_dist_init(
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            server: c_int,
            timeout_ms: c_int,
            nccl_device: c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> *mut c_void;
        pub fn moco_dist_free(g: *mut c_void);
        pub fn moco_dist_allreduce_sum(
            g: *mut c_void,
            t: *mut torch_sys::C_tensor,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn moco_dist_allgather(
            g: *mut c_void,
            out: *mut torch_sys::C_tensor,
            input: *mut torch_sys::C_tensor,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn moco_dist_broadcast(
            g: *mut c_void,
            t: *mut torch_sys::C_tensor,
            root: c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn moco_dist_barrier(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
    }
}

/// Rank `rank`'s share of a global batch: positions rank, rank+world, rank+2·world, … — the
/// images that one process's SplitBatchNorm puts in the same groups (it folds the batch as
/// `view(-1, C·splits, H, W)`, so group g holds positions ≡ g mod splits).
pub fn share<T: Clone>(batch: &[T], rank: usize, world: usize) -> Vec<T> {
    batch.iter().skip(rank).step_by(world).cloned().collect()
}

/// The same share of a batch tensor.
pub fn share_tensor(t: &Tensor, rank: usize, world: usize) -> Tensor {
    let mut shape = t.size();
    let n = shape[0];
    shape[0] = world as i64;
    shape.insert(0, n / world as i64);
    t.reshape(shape.as_slice()).select(1, rank as i64)
}

/// Undoes `share` on gathered shares (rank-major `[world·b, …]`) → the global batch order.
pub fn interleave(gathered: &Tensor, world: usize) -> Tensor {
    let mut shape = gathered.size();
    let n = shape[0];
    shape[0] = n / world as i64;
    shape.insert(0, world as i64);
    let mut flat = gathered.size();
    flat[0] = n;
    gathered
        .reshape(shape.as_slice())
        .transpose(0, 1)
        .reshape(flat.as_slice())
}

/// A process group of `world` ranks (NCCL: CUDA tensors; Gloo: CPU tensors, or CUDA tensors
/// staged through the host).
pub struct Dist {
    pub rank: usize,
    pub world: usize,
    pub backend: DistBackend,
    #[cfg(moco_gloo)]
    group: *mut std::os::raw::c_void,
}

/// Gradients are all-reduced in buckets of about this many bytes, as DDP does (25 MiB).
const BUCKET_BYTES: i64 = 25 << 20;

#[cfg(moco_gloo)]
fn call(what: &str, f: impl FnOnce(*mut std::os::raw::c_char, usize) -> i32) -> Result<()> {
    let mut buf = vec![0u8; 1024];
    if f(buf.as_mut_ptr().cast(), buf.len()) != 0 {
        let msg = std::ffi::CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        // c10d's messages run over several lines (a C++ backtrace): keep the first.
        let first = msg.lines().next().unwrap_or("").trim().to_string();
        bail!("distributed {what} failed: {first} (did another rank stop?)");
    }
    Ok(())
}

impl Dist {
    #[cfg(moco_gloo)]
    pub fn init(
        env: &DistEnv,
        backend: DistBackend,
        device: Device,
        timeout: Duration,
    ) -> Result<Dist> {
        let backend = backend.resolve(device)?;
        let nccl_device = match (backend, device) {
            (DistBackend::Nccl, Device::Cuda(i)) => i as i32,
            _ => -1,
        };
        let host = std::ffi::CString::new(env.master_addr.clone())?;
        let mut buf = vec![0u8; 1024];
        // SAFETY: valid C strings and buffer; the shim catches every C++ exception.
        let group = unsafe {
            ffi::moco_dist_init(
                host.as_ptr(),
                env.master_port as i32,
                env.rank as i32,
                env.world as i32,
                (env.rank == 0 && !env.agent_store) as i32,
                timeout.as_millis().min(i32::MAX as u128) as i32,
                nccl_device,
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if group.is_null() {
            let msg = std::ffi::CStr::from_bytes_until_nul(&buf)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            bail!(
                "rank {} of {}: cannot join the {} group at MASTER_ADDR={} MASTER_PORT={} \
                 within {:.0}s: {}",
                env.rank,
                env.world,
                backend.name(),
                env.master_addr,
                env.master_port,
                timeout.as_secs_f64(),
                msg.lines().next().unwrap_or("").trim()
            );
        }
        Ok(Dist {
            rank: env.rank,
            world: env.world,
            backend,
            group,
        })
    }

    #[cfg(not(moco_gloo))]
    pub fn init(
        env: &DistEnv,
        backend: DistBackend,
        device: Device,
        _timeout: Duration,
    ) -> Result<Dist> {
        let _ = (env, backend.resolve(device)?);
        bail!(
            "a distributed run: this moco-train was built without Gloo's headers (apt-get install \
             libgloo-dev, then rebuild)"
        )
    }

    /// In place: `t` = Σ over ranks.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        #[cfg(moco_gloo)]
        // SAFETY: `t` is a live tensor; the shim catches exceptions.
        return call("all-reduce", |e, n| unsafe {
            ffi::moco_dist_allreduce_sum(self.group, t.as_mut_ptr(), e, n)
        });
        #[cfg(not(moco_gloo))]
        {
            let _ = t;
            unreachable!("no group without Gloo")
        }
    }

    /// The ranks' `t` `[n, …]` concatenated in rank order: `[world·n, …]`.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let mut shape = t.size();
        shape[0] *= self.world as i64;
        let mut out = Tensor::empty(shape.as_slice(), (t.kind(), t.device()));
        let mut input = t.contiguous();
        #[cfg(moco_gloo)]
        // SAFETY: live tensors; `out` has room for every rank's `t`.
        call("all-gather", |e, n| unsafe {
            ffi::moco_dist_allgather(self.group, out.as_mut_ptr(), input.as_mut_ptr(), e, n)
        })?;
        #[cfg(not(moco_gloo))]
        let _ = (&mut out, &mut input);
        Ok(out)
    }

    /// In place: `t` = rank `root`'s `t`.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        #[cfg(moco_gloo)]
        // SAFETY: live tensor; the shim catches exceptions.
        return call("broadcast", |e, n| unsafe {
            ffi::moco_dist_broadcast(self.group, t.as_mut_ptr(), root as i32, e, n)
        });
        #[cfg(not(moco_gloo))]
        {
            let _ = (t, root);
            unreachable!("no group without Gloo")
        }
    }

    pub fn barrier(&self) -> Result<()> {
        #[cfg(moco_gloo)]
        // SAFETY: the shim catches exceptions.
        return call("barrier", |e, n| unsafe {
            ffi::moco_dist_barrier(self.group, e, n)
        });
        #[cfg(not(moco_gloo))]
        unreachable!("no group without Gloo")
    }

    /// Gradients averaged over ranks, all-reduced in flat buckets of ~25 MiB (one collective per
    /// bucket instead of one per tensor).
    pub fn average_gradients<'a>(&self, params: impl Iterator<Item = &'a Tensor>) -> Result<()> {
        let grads: Vec<Tensor> = params.map(|p| p.grad()).filter(|g| g.defined()).collect();
        let mut bucket: Vec<&Tensor> = Vec::new();
        let mut bytes = 0;
        for (i, g) in grads.iter().enumerate() {
            bucket.push(g);
            bytes += g.numel() as i64 * g.kind().elt_size_in_bytes() as i64;
            if bytes >= BUCKET_BYTES || i + 1 == grads.len() {
                self.reduce_bucket(&bucket)?;
                bucket.clear();
                bytes = 0;
            }
        }
        Ok(())
    }

    fn reduce_bucket(&self, bucket: &[&Tensor]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let flat: Vec<Tensor> = bucket.iter().map(|g| g.flatten(0, -1)).collect();
            let mut buf = Tensor::cat(&flat, 0);
            self.all_reduce_sum(&mut buf)?;
            let buf = buf / self.world as f64;
            let mut at = 0;
            for g in bucket {
                let n = g.numel() as i64;
                let mut g = (*g).shallow_clone();
                g.copy_(&buf.narrow(0, at, n).view_as(&g));
                at += n;
            }
            Ok(())
        })
    }

    /// In place: the mean over ranks (BN running statistics before a checkpoint).
    pub fn average(&self, t: &mut Tensor) -> Result<()> {
        if matches!(t.kind(), Kind::Int64 | Kind::Int) {
            return Ok(()); // num_batches_tracked: the same on every rank
        }
        tch::no_grad(|| -> Result<()> {
            self.all_reduce_sum(t)?;
            let _ = t.g_div_scalar_(self.world as f64);
            Ok(())
        })
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        #[cfg(moco_gloo)]
        // SAFETY: created by moco_dist_init, freed once.
        unsafe {
            ffi::moco_dist_free(self.group)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_interleave_back_into_the_batch() {
        let x = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).view([12, 2]);
        let shares: Vec<Tensor> = (0..3).map(|r| share_tensor(&x, r, 3)).collect();
        assert_eq!(
            Vec::<f32>::try_from(shares[1].flatten(0, -1)).unwrap(),
            vec![2., 3., 8., 9., 14., 15., 20., 21.]
        );
        assert!(interleave(&Tensor::cat(&shares, 0), 3).equal(&x));
        assert_eq!(share(&[0, 1, 2, 3, 4, 5], 1, 3), vec![1, 4]);
    }
}
