//! Application steps: any integer type in, `u64` in the API, checked against what a file can record.

use std::fmt::Display;

use crate::error::{Error, Result};

/// The largest application step a checkpoint records: the file's step field is a signed 64-bit integer
/// (FORMAT.md), so this version writes steps `0..=MAX_STEP`, which read the same whether the field is
/// taken as signed or unsigned.
///
/// Every function that takes a step refuses a negative one or one above this with
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument), naming the value. Files written while
/// the API took signed steps may hold a negative step: it reads as its two's complement, a value above
/// `MAX_STEP` (`u64::cast_signed` gives the negative number back).
pub const MAX_STEP: u64 = i64::MAX.cast_unsigned();

/// A step given as any integer type (`u64`, `usize`, `i32`, ...), as the API's `u64`.
pub(crate) fn step_arg(step: impl TryInto<u64> + Copy + Display) -> Result<u64> {
    match step.try_into() {
        Ok(s) => check_step(s),
        // The conversion's error does not say why; the value does.
        Err(_) if step.to_string().starts_with('-') => {
            Err(Error::invalid(format!("step {step} is negative: steps are 0 or more")))
        }
        Err(_) => Err(above_max(step)),
    }
}

/// `step` if a checkpoint can record it.
pub(crate) fn check_step(step: u64) -> Result<u64> {
    if step <= MAX_STEP { Ok(step) } else { Err(above_max(step)) }
}

fn above_max(step: impl Display) -> Error {
    Error::invalid(format!(
        "step {step} is above {MAX_STEP}, the largest a checkpoint records (its step field is a signed 64-bit \
         integer)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn any_integer_type_in_range_is_a_step() {
        assert_eq!(step_arg(7u8).unwrap(), 7);
        assert_eq!(step_arg(7usize).unwrap(), 7);
        assert_eq!(step_arg(0i64).unwrap(), 0);
        assert_eq!(step_arg(i64::MAX).unwrap(), MAX_STEP);
        assert_eq!(step_arg(u128::from(MAX_STEP)).unwrap(), MAX_STEP);
    }

    #[test]
    fn negative_and_too_large_steps_are_refused_naming_the_value() {
        let e = step_arg(-5i32).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("step -5 is negative"), "{e}");
        let e = step_arg(i64::MIN).unwrap_err();
        assert!(e.to_string().contains("step -9223372036854775808 is negative"), "{e}");
        let e = step_arg(MAX_STEP + 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("step 9223372036854775808 is above 9223372036854775807"), "{e}");
        let e = step_arg(u128::MAX).unwrap_err();
        assert!(e.to_string().contains(&format!("step {} is above", u128::MAX)), "{e}");
        assert!(check_step(u64::MAX).is_err());
    }
}
