//! Partner copies for the collective checkpointer (`_mpi.py`, `CKPT_PARTNER=1`): a part being received from
//! another node. The bytes travel over mpi4py; the core keeps the part only once it is exactly the part
//! committed and verifies (see `ckpt_core::Store::receive_part`).

use std::sync::Mutex;

use ckpt_core::{Error, ErrorKind, PartReceiver};
use pyo3::prelude::*;

use crate::checkpointer::{PartTuple, part_identities};
use crate::errors::{IntoPyResult, to_py};

/// A part being received from another node (`Checkpointer.receive_part_copy`): `write` its bytes in order,
/// then `commit` it. Dropped without a commit, its temporary file is removed.
#[pyclass(module = "ckpt._ckpt", name = "PartReceiver", frozen)]
pub struct PyPartReceiver {
    pub(crate) store: std::sync::Arc<ckpt_core::Checkpointer>,
    pub(crate) receiver: Mutex<Option<PartReceiver>>,
}

impl PyPartReceiver {
    fn take_or_use<T>(
        &self,
        py: Python<'_>,
        take: bool,
        f: impl FnOnce(&ckpt_core::Checkpointer, Option<PartReceiver>, &mut Option<PartReceiver>) -> Result<T, Error> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        let mut slot = self.receiver.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            return Err(to_py(
                py,
                &Error::new(ErrorKind::InvalidState, "this part was committed or abandoned already"),
            ));
        }
        let taken = if take { slot.take() } else { None };
        let store = &self.store;
        let slot = &mut *slot;
        py.detach(|| f(store, taken, slot)).py_err(py)
    }
}

#[pymethods]
impl PyPartReceiver {
    /// Appends `data`, the bytes at `offset` of the part (the bytes received so far: in order). A failure
    /// abandons the part.
    fn write(&self, py: Python<'_>, offset: u64, data: &[u8]) -> PyResult<()> {
        let data = data.to_vec();
        self.take_or_use(py, false, move |_, _, slot| {
            let r = slot.as_mut().map_or(Ok(()), |r| r.write_at(offset, &data));
            if r.is_err() {
                *slot = None;
            }
            r
        })
    }

    /// Keeps the part once it is exactly `identity` (the one rank 0 committed) and verifies; otherwise
    /// raises and nothing is kept.
    fn commit(&self, py: Python<'_>, identity: PartTuple) -> PyResult<()> {
        let expected = part_identities(vec![identity]).py_err(py)?.remove(0);
        self.take_or_use(py, true, move |cp, taken, _| match taken {
            Some(r) => cp.store().commit_received_part(r, &expected).map(drop),
            None => Ok(()),
        })
    }
}
