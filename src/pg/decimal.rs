//! Numeric values as exact fixed-point integers, for the debit fast path.
//!
//! A debit adds, multiplies and compares some fifteen numerics; through
//! PostgreSQL's numeric functions each one unpacked its arguments and
//! palloc'd a result, which together cost more than any single row write of
//! the debit. Here values are read from numeric datums and written back as
//! numeric.c lays them out, byte for byte, display scale included, so a row
//! written here holds what an UPDATE computing the same expression in SQL
//! would store (`add` keeps the larger display scale, `mul` the sum of both,
//! as numeric_add and numeric_mul do).
//!
//! Exact or nothing: a value with more than 8 decimal places, one too large
//! for an i128 of 10^-8 units, NaN or an infinity is None, as is a result
//! that would overflow; callers then decline to the SQL path.

use pgrx::pg_sys::{self, Datum};
use std::cmp::Ordering;

// The varlena and numeric headers below are read and written little-endian.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "numeric layout read as little-endian"
);

/// Decimal places held exactly.
const PLACES: u32 = 8;
const ONE: i128 = 10i128.pow(PLACES);
/// numeric's digits are base 10,000.
const NBASE: u64 = 10_000;
/// Base-10,000 digits after the point that PLACES covers.
const FRACTION_DIGITS: i32 = (PLACES / 4) as i32;
/// Base-10,000 digits of the largest value (i128::MAX units: 39 decimal
/// digits), and the bytes of its numeric with a long header.
const MAX_DIGITS: usize = 10;
const MAX_NUMERIC_BYTES: usize = 4 + 4 + 2 * MAX_DIGITS;

// numeric.c's header bits.
const SIGN_MASK: u16 = 0xC000;
const NEG: u16 = 0x4000;
const SHORT: u16 = 0x8000;
const SPECIAL: u16 = 0xC000;
const SHORT_SIGN: u16 = 0x2000;
const SHORT_DSCALE_MASK: u16 = 0x1F80;
const SHORT_DSCALE_SHIFT: u16 = 7;
const SHORT_DSCALE_MAX: u16 = SHORT_DSCALE_MASK >> SHORT_DSCALE_SHIFT;
const SHORT_WEIGHT_SIGN: u16 = 0x0040;
const SHORT_WEIGHT_MASK: u16 = 0x003F;
const DSCALE_MASK: u16 = 0x3FFF;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Decimal {
    /// The value in units of 10^-8.
    units: i128,
    /// Digits shown after the point (numeric's dscale).
    dscale: u16,
}

impl Decimal {
    pub(crate) const ZERO: Decimal = Decimal::from_i64(0);

    pub(crate) const fn from_i64(v: i64) -> Decimal {
        Decimal {
            units: v as i128 * ONE,
            dscale: 0,
        }
    }

    /// The value of a numeric datum held inline (either varlena header);
    /// None for a compressed or out-of-line one, or one this cannot hold.
    pub(crate) unsafe fn from_datum(datum: Datum) -> Option<Decimal> {
        let p = datum.cast_mut_ptr::<u8>() as *const u8;
        let first = *p;
        let body = if first & 0x01 == 0x01 {
            // A 1-byte header holding the length (0: a TOAST pointer).
            let len = (first >> 1) as usize;
            if len < 1 + 2 {
                return None;
            }
            std::slice::from_raw_parts(p.add(1), len - 1)
        } else if first & 0x03 == 0x00 {
            let mut header = [0u8; 4];
            std::ptr::copy_nonoverlapping(p, header.as_mut_ptr(), 4);
            let len = (u32::from_le_bytes(header) >> 2) as usize;
            if len < 4 + 2 {
                return None;
            }
            std::slice::from_raw_parts(p.add(4), len - 4)
        } else {
            return None; // compressed
        };
        Decimal::from_body(body)
    }

    /// From a numeric's bytes after its varlena header.
    fn from_body(body: &[u8]) -> Option<Decimal> {
        let header = u16::from_le_bytes([body[0], body[1]]);
        let (negative, dscale, weight, digits) = if header & SIGN_MASK == SHORT {
            let low = (header & SHORT_WEIGHT_MASK) as i32;
            let weight = if header & SHORT_WEIGHT_SIGN != 0 {
                low - 64
            } else {
                low
            };
            let dscale = (header & SHORT_DSCALE_MASK) >> SHORT_DSCALE_SHIFT;
            (header & SHORT_SIGN != 0, dscale, weight, &body[2..])
        } else {
            if header & SIGN_MASK == SPECIAL || body.len() < 4 {
                return None;
            }
            let weight = i16::from_le_bytes([body[2], body[3]]) as i32;
            (
                header & SIGN_MASK == NEG,
                header & DSCALE_MASK,
                weight,
                &body[4..],
            )
        };
        let mut units: i128 = 0;
        for (i, digit) in digits.chunks_exact(2).enumerate() {
            let digit = u16::from_le_bytes([digit[0], digit[1]]) as i128;
            // This digit's power of ten, in units.
            let exponent = 4 * (weight - i as i32 + FRACTION_DIGITS);
            if exponent < 0 {
                if digit != 0 {
                    return None;
                }
                continue;
            }
            let term = digit.checked_mul(10i128.checked_pow(exponent as u32)?)?;
            units = units.checked_add(term)?;
        }
        Some(Decimal {
            units: if negative { -units } else { units },
            dscale,
        })
    }

    /// As numeric_add: the larger display scale of the two.
    pub(crate) fn add(self, other: Decimal) -> Option<Decimal> {
        Some(Decimal {
            units: self.units.checked_add(other.units)?,
            dscale: self.dscale.max(other.dscale),
        })
    }

    /// As numeric_sub: the larger display scale of the two.
    pub(crate) fn sub(self, other: Decimal) -> Option<Decimal> {
        Some(Decimal {
            units: self.units.checked_sub(other.units)?,
            dscale: self.dscale.max(other.dscale),
        })
    }

    /// `v` ten-thousandths (4 decimal places, the precision of an amount).
    pub(crate) const fn from_ten_thousandths(v: i64) -> Decimal {
        Decimal {
            units: v as i128 * (ONE / 10_000),
            dscale: 4,
        }
    }

    /// The value in ten-thousandths, rounded down; None beyond an i64.
    pub(crate) fn ten_thousandths(self) -> Option<i64> {
        i64::try_from(self.units.div_euclid(ONE / 10_000)).ok()
    }

    /// As numeric_mul: the sum of both display scales; None if the product
    /// has more than 8 decimal places (or a scale numeric would round).
    pub(crate) fn mul(self, other: Decimal) -> Option<Decimal> {
        let product = self.units.checked_mul(other.units)?;
        if product % ONE != 0 {
            return None;
        }
        Some(Decimal {
            units: product / ONE,
            dscale: Some(self.dscale + other.dscale).filter(|&d| d <= DSCALE_MASK)?,
        })
    }

    /// No nonzero digit after the first `places` decimal places (<= 8):
    /// round(x, places) = x.
    pub(crate) fn is_exact_to(self, places: u32) -> bool {
        self.units % 10i128.pow(PLACES - places.min(PLACES)) == 0
    }

    /// As trim_scale(): the display scale of the digits that are not zero.
    pub(crate) fn trim_scale(self) -> Decimal {
        let mut dscale = PLACES as u16;
        let mut units = self.units;
        while dscale > 0 && units % 10 == 0 {
            units /= 10;
            dscale -= 1;
        }
        Decimal {
            units: self.units,
            dscale,
        }
    }

    /// A numeric datum (palloc'd in the current memory context), laid out
    /// as numeric.c's make_result lays out the same value and scale.
    pub(crate) unsafe fn to_datum(self) -> Datum {
        let mut bytes = [0u8; MAX_NUMERIC_BYTES];
        let len = self.write_numeric(&mut bytes);
        let copy = pg_sys::palloc(len) as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, len);
        Datum::from(copy)
    }

    /// Writes the numeric's bytes, its 4-byte varlena header included, at
    /// the start of `out` (no allocation: a debit writes three); their length.
    fn write_numeric(self, out: &mut [u8; MAX_NUMERIC_BYTES]) -> usize {
        let magnitude = self.units.unsigned_abs();
        // Base-10,000 digits, least significant first: two after the point,
        // then the integer part's.
        let mut groups = [0u16; MAX_DIGITS];
        let fraction = (magnitude % ONE as u128) as u64;
        groups[0] = (fraction % NBASE) as u16;
        groups[1] = (fraction / NBASE) as u16;
        let mut count = 2;
        let mut integer = magnitude / ONE as u128;
        while integer > 0 {
            groups[count] = (integer % NBASE as u128) as u16;
            integer /= NBASE as u128;
            count += 1;
        }
        // Without zero digits at either end; zero has none at all.
        while count > 0 && groups[count - 1] == 0 {
            count -= 1;
        }
        let trailing = groups[..count].iter().take_while(|&&d| d == 0).count();
        let digits = &groups[trailing..count];
        let negative = self.units < 0 && !digits.is_empty();
        let weight = if digits.is_empty() {
            0
        } else {
            count as i32 - 1 - FRACTION_DIGITS
        };
        let mut len = 4;
        let mut put = |bytes: [u8; 2]| {
            out[len..len + 2].copy_from_slice(&bytes);
            len += 2;
        };
        if self.dscale <= SHORT_DSCALE_MAX && (-64..=63).contains(&weight) {
            let mut header = SHORT | (self.dscale << SHORT_DSCALE_SHIFT);
            if negative {
                header |= SHORT_SIGN;
            }
            if weight < 0 {
                header |= SHORT_WEIGHT_SIGN;
            }
            header |= (weight as u16) & SHORT_WEIGHT_MASK;
            put(header.to_le_bytes());
        } else {
            let sign = if negative { NEG } else { 0 };
            put((sign | (self.dscale & DSCALE_MASK)).to_le_bytes());
            put((weight as i16).to_le_bytes());
        }
        for digit in digits.iter().rev() {
            put(digit.to_le_bytes());
        }
        out[..4].copy_from_slice(&((len as u32) << 2).to_le_bytes());
        len
    }
}

/// By value (numeric_eq: 1.50 = 1.5).
impl PartialEq for Decimal {
    fn eq(&self, other: &Decimal) -> bool {
        self.units == other.units
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// By value, as numeric_cmp.
impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        self.units.cmp(&other.units)
    }
}

/// Against PostgreSQL's own numeric functions, byte for byte.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::Decimal;
    use crate::pg::fmgr::{call, varlena_bytes};
    use pgrx::pg_sys::{self, Datum};
    use pgrx::prelude::*;
    use std::cmp::Ordering;

    /// Scales 0 to 70 (short and long headers), weights from -2 to 7,
    /// signs, zeros with a scale, and values around every limit.
    const HELD: &[&str] = &[
        "0",
        "0.00",
        "-0.000",
        "1",
        "-1",
        "1.5",
        "1.50",
        "-0.0001",
        "0.0001",
        "0.00000001",
        "-0.00000001",
        "0.12345678",
        "12345678.87654321",
        "99999999999999.9999",
        "1000000000000000",
        "999999999999999.9999",
        "0.5",
        "10000",
        "9999.9999",
        "100000000",
        "123456789012345678901.5",
        "-250.125",
        "7.000000000",
        "3.14159265",
        "1.0000000000000000000000000000000000000000000000000000000000000000000000",
        "1000000000000000000000000000000",
        "-999999999999999999999999999999.99999999",
    ];
    /// Those a Decimal cannot hold: 9 places or more, 10^31 and up, NaN
    /// and the infinities.
    const NOT_HELD: &[&str] = &[
        "0.000000001",
        "1.000000005",
        "10000000000000000000000000000000",
        "NaN",
        "Infinity",
        "-Infinity",
    ];

    unsafe fn numeric(text: &str) -> Datum {
        let text = std::ffi::CString::new(text).unwrap();
        let args = [
            Datum::from(text.as_ptr()),
            Datum::from(pg_sys::InvalidOid),
            Datum::from(-1i32),
        ];
        call(pg_sys::numeric_in, &args)
    }

    /// A numeric with a 1-byte varlena header, as a heap tuple holds it.
    fn packed(bytes: &[u8]) -> Vec<u8> {
        let len = bytes.len() - 3;
        assert!(len < 128);
        let mut out = vec![((len << 1) | 1) as u8];
        out.extend_from_slice(&bytes[4..]);
        out
    }

    impl Decimal {
        /// The bytes to_datum writes.
        fn to_numeric(self) -> Vec<u8> {
            let mut out = [0; super::MAX_NUMERIC_BYTES];
            let len = self.write_numeric(&mut out);
            out[..len].to_vec()
        }
    }

    unsafe fn held(datum: Datum) -> Option<Decimal> {
        Decimal::from_datum(datum)
    }

    #[pg_test]
    fn decimals_read_compute_and_write_numerics_as_postgresql_does() {
        unsafe {
            let mut pairs = 0;
            for &a_text in HELD.iter().chain(NOT_HELD) {
                let a = numeric(a_text);
                let a_bytes = varlena_bytes(a);
                let Some(da) = held(a) else {
                    assert!(NOT_HELD.contains(&a_text), "{a_text} should be held");
                    continue;
                };
                assert!(!NOT_HELD.contains(&a_text), "{a_text} cannot be held");
                assert_eq!(da.to_numeric(), a_bytes, "{a_text} written back");
                let short = packed(&a_bytes);
                let from_short = held(Datum::from(short.as_ptr() as *mut u8));
                assert_eq!(
                    from_short.map(|d| d.to_numeric()),
                    Some(a_bytes.clone()),
                    "{a_text} packed"
                );
                let trimmed = call(pg_sys::numeric_trim_scale, &[a]);
                assert_eq!(
                    da.trim_scale().to_numeric(),
                    varlena_bytes(trimmed),
                    "trim_scale({a_text})"
                );
                let rounded = call(pg_sys::numeric_round, &[a, Datum::from(4i32)]);
                let exact = call(pg_sys::numeric_cmp, &[rounded, a]).value() as i32 == 0;
                assert_eq!(da.is_exact_to(4), exact, "round({a_text}, 4) = {a_text}");

                for &b_text in HELD {
                    let b = numeric(b_text);
                    let db = held(b).expect("held");
                    pairs += 1;
                    let order = call(pg_sys::numeric_cmp, &[a, b]).value() as i32;
                    assert_eq!(da.cmp(&db), order.cmp(&0), "{a_text} vs {b_text}");
                    assert_eq!(da == db, order == 0, "{a_text} = {b_text}");

                    let sum = call(pg_sys::numeric_add, &[a, b]);
                    match da.add(db) {
                        Some(d) => {
                            assert_eq!(d.to_numeric(), varlena_bytes(sum), "{a_text} + {b_text}")
                        }
                        None => assert!(held(sum).is_none(), "{a_text} + {b_text} is held"),
                    }
                    let product = call(pg_sys::numeric_mul, &[a, b]);
                    match da.mul(db) {
                        Some(d) => assert_eq!(
                            d.to_numeric(),
                            varlena_bytes(product),
                            "{a_text} * {b_text}"
                        ),
                        // Refused only when the product has more than 8
                        // places or overflows the units on the way.
                        None => assert!(
                            held(product).is_none() || da.units.checked_mul(db.units).is_none(),
                            "{a_text} * {b_text} was refused"
                        ),
                    }
                }
            }
            assert!(pairs > 500, "only {pairs} pairs compared");
            assert_eq!(Decimal::from_i64(-7).cmp(&Decimal::ZERO), Ordering::Less);
            assert_eq!(
                Decimal::from_i64(100).to_numeric(),
                varlena_bytes(numeric("100"))
            );
        }
    }
}
