//! Driver for the Sensirion SHT3x (SHT30/31/35) temperature and humidity sensor over
//! `embedded_hal::i2c::I2c`.
//!
//! Only what a node needs: one single-shot, high-repeatability measurement with clock
//! stretching, so the driver needs no delay provider: the sensor holds SCL low until the result
//! is ready. Every 16-bit word the sensor returns is followed by a CRC-8 that is checked.
//!
//! Reference: Sensirion, "Datasheet SHT3x-DIS", version 7 (2022), sections 4.3 (single shot
//! commands), 4.12 (checksum) and 4.13 (conversion of signal output).

use core::fmt;

use embedded_hal::i2c::I2c;

/// Single shot, repeatability high, clock stretching enabled (datasheet table 9).
const MEASURE_HIGH_STRETCHED: [u8; 2] = [0x2C, 0x06];

/// The sensor's I2C address, chosen by its ADDR pin (datasheet table 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// ADDR pin to VSS: 0x44, the default of most breakout boards.
    Low,
    /// ADDR pin to VDD: 0x45.
    High,
}

impl Address {
    #[must_use]
    pub const fn bits(self) -> u8 {
        match self {
            Address::Low => 0x44,
            Address::High => 0x45,
        }
    }
}

/// One measurement, in the node link's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Hundredths of a degree Celsius.
    pub temperature_centi: i32,
    /// Hundredths of a percent relative humidity.
    pub humidity_centi: i32,
}

/// Why a measurement failed: the bus failed, or the bus worked and the data is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C transfer failed (no acknowledge, arbitration loss, ...).
    I2c(E),
    /// A word's CRC-8 does not match: a bit flipped on the bus.
    Crc,
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "I2C error: {e:?}"),
            Error::Crc => f.write_str("SHT3x data CRC mismatch"),
        }
    }
}

/// An SHT3x on an I2C bus (or on a shared-bus handle).
#[derive(Debug)]
pub struct Sht3x<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Sht3x<I2C> {
    pub fn new(i2c: I2C, address: Address) -> Self {
        Sht3x {
            i2c,
            address: address.bits(),
        }
    }

    /// Takes one measurement. Blocks for up to 15.5 ms while the sensor stretches the clock.
    pub fn measure(&mut self) -> Result<Measurement, Error<I2C::Error>> {
        self.i2c
            .write(self.address, &MEASURE_HIGH_STRETCHED)
            .map_err(Error::I2c)?;
        // Datasheet figure 12: the read header is acknowledged, then SCL is held low until the
        // measurement is done; the data follows as T msb, T lsb, CRC, RH msb, RH lsb, CRC.
        let mut data = [0u8; 6];
        self.i2c.read(self.address, &mut data).map_err(Error::I2c)?;
        let raw_t = word(&data[0..3])?;
        let raw_rh = word(&data[3..6])?;
        Ok(Measurement {
            temperature_centi: temperature_centi(raw_t),
            humidity_centi: humidity_centi(raw_rh),
        })
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

/// A big-endian word followed by its CRC.
fn word<E>(bytes: &[u8]) -> Result<u16, Error<E>> {
    let value = [bytes[0], bytes[1]];
    if crc8(&value) == bytes[2] {
        Ok(u16::from_be_bytes(value))
    } else {
        Err(Error::Crc)
    }
}

/// CRC-8 of the datasheet, section 4.12: polynomial 0x31 (x^8 + x^5 + x^4 + 1), initial value
/// 0xFF, no reflection, no final XOR. `crc8(&[0xBE, 0xEF]) == 0x92`.
#[must_use]
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc: u8 = 0xFF;
    for &byte in data {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// T = -45 + 175 * raw / 65535 °C, in hundredths, rounded to nearest.
#[must_use]
pub fn temperature_centi(raw: u16) -> i32 {
    let scaled = (17_500 * i64::from(raw) + 32_767) / 65_535;
    (scaled - 4_500) as i32
}

/// RH = 100 * raw / 65535 %, in hundredths, rounded to nearest.
#[must_use]
pub fn humidity_centi(raw: u16) -> i32 {
    ((10_000 * i64::from(raw) + 32_767) / 65_535) as i32
}

/// Inverse of [`temperature_centi`], for simulated sensors: the raw word closest to `centi`.
#[must_use]
pub fn raw_temperature(centi: i32) -> u16 {
    let raw = ((i64::from(centi) + 4_500) * 65_535 + 8_750) / 17_500;
    raw.clamp(0, 0xFFFF) as u16
}

/// Inverse of [`humidity_centi`], for simulated sensors.
#[must_use]
pub fn raw_humidity(centi: i32) -> u16 {
    let raw = (i64::from(centi) * 65_535 + 5_000) / 10_000;
    raw.clamp(0, 0xFFFF) as u16
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use embedded_hal::i2c::{ErrorKind, ErrorType, NoAcknowledgeSource, Operation};

    use super::*;

    /// One expected bus transfer: a write of these bytes, or a read that returns them.
    #[derive(Debug, Clone, PartialEq)]
    enum Transfer {
        Write(u8, Vec<u8>),
        Read(u8, Vec<u8>),
        Nack(u8),
    }

    /// A scripted bus: each transfer must match the script in order, like embedded-hal-mock.
    #[derive(Debug)]
    struct FakeBus {
        script: Vec<Transfer>,
        at: usize,
    }

    impl FakeBus {
        fn new(script: &[Transfer]) -> Self {
            FakeBus {
                script: script.to_vec(),
                at: 0,
            }
        }
        fn done(&self) {
            assert_eq!(self.at, self.script.len(), "unused transfers in the script");
        }
    }

    impl ErrorType for FakeBus {
        type Error = ErrorKind;
    }

    impl I2c for FakeBus {
        fn transaction(
            &mut self,
            address: u8,
            operations: &mut [Operation<'_>],
        ) -> Result<(), ErrorKind> {
            for op in operations {
                let expected = self
                    .script
                    .get(self.at)
                    .cloned()
                    .expect("transfer past script");
                self.at += 1;
                match (op, expected) {
                    (Operation::Write(bytes), Transfer::Write(a, want)) => {
                        assert_eq!((address, bytes.to_vec()), (a, want));
                    }
                    (Operation::Read(buf), Transfer::Read(a, data)) => {
                        assert_eq!(address, a);
                        buf.copy_from_slice(&data);
                    }
                    (_, Transfer::Nack(a)) => {
                        assert_eq!(address, a);
                        return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
                    }
                    (op, want) => panic!("unexpected {op:?}, script wants {want:?}"),
                }
            }
            Ok(())
        }
    }

    #[test]
    fn crc8_matches_the_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn conversion_covers_the_datasheet_range() {
        assert_eq!(temperature_centi(0), -4500);
        assert_eq!(temperature_centi(0xFFFF), 13000);
        assert_eq!(temperature_centi(0x6666), 2500); // 26214 = 0.4 of full scale: 25.00 °C
        assert_eq!(humidity_centi(0), 0);
        assert_eq!(humidity_centi(0xFFFF), 10000);
        assert_eq!(humidity_centi(0x8000), 5000);
    }

    #[test]
    fn raw_inverse_round_trips_every_hundredth() {
        for centi in -4500..=13000 {
            assert_eq!(temperature_centi(raw_temperature(centi)), centi);
        }
        for centi in 0..=10000 {
            assert_eq!(humidity_centi(raw_humidity(centi)), centi);
        }
    }

    #[test]
    fn a_measurement_is_a_stretched_single_shot_with_checked_words() {
        let bus = FakeBus::new(&[
            Transfer::Write(0x44, std::vec![0x2C, 0x06]), // single shot, high, stretching
            Transfer::Read(
                0x44,
                std::vec![
                    0x66, 0x66, 0x93, // temperature 0x6666 = 25.00 °C, CRC
                    0x80, 0x00, 0xA2, // humidity 0x8000 = 50.00 %, CRC
                ],
            ),
        ]);
        let mut sht = Sht3x::new(bus, Address::Low);
        let m = sht.measure().unwrap();
        assert_eq!(
            m,
            Measurement {
                temperature_centi: 2500,
                humidity_centi: 5000
            }
        );
        sht.release().done();
    }

    #[test]
    fn a_corrupt_word_is_a_crc_error_not_a_value() {
        let bus = FakeBus::new(&[
            Transfer::Write(0x45, std::vec![0x2C, 0x06]),
            Transfer::Read(0x45, std::vec![0x66, 0x67, 0x93, 0x80, 0x00, 0xA2]),
        ]);
        let mut sht = Sht3x::new(bus, Address::High);
        assert_eq!(sht.measure(), Err(Error::Crc));
        sht.release().done();
    }

    #[test]
    fn a_missing_sensor_is_a_bus_error_carrying_the_bus_error() {
        let bus = FakeBus::new(&[Transfer::Nack(0x44)]);
        let mut sht = Sht3x::new(bus, Address::Low);
        assert_eq!(
            sht.measure(),
            Err(Error::I2c(ErrorKind::NoAcknowledge(
                NoAcknowledgeSource::Address
            )))
        );
        sht.release().done();
    }
}
