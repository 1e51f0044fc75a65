//! Simulated sensors: an SHT3x on an in-memory I2C bus, read through the real driver, and a
//! barometer. Physical values follow slow seeded random walks, so a run is reproducible.

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};
use heapless::Vec as HVec;
use outpost_proto::wire::MAX_READINGS;
use outpost_proto::{ChannelId, Reading};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::app::SensorBank;
use crate::sht3x::{self, Address, Sht3x};

/// A random walk that drifts back towards `mean`, bounded to `[min, max]`.
#[derive(Debug, Clone, Copy)]
struct Walk {
    value: f64,
    mean: f64,
    step: f64,
    min: f64,
    max: f64,
}

impl Walk {
    fn next(&mut self, rng: &mut SmallRng) -> f64 {
        let pull = (self.mean - self.value) * 0.01;
        self.value = (self.value + pull + rng.random_range(-self.step..=self.step))
            .clamp(self.min, self.max);
        self.value
    }
}

/// An SHT3x as seen from the I2C bus: it answers the single-shot command 0x2C06 with a fresh
/// measurement (two words, each with its CRC-8) and NACKs everything else, like the real part.
#[derive(Debug)]
pub struct SimSht3x {
    address: u8,
    temperature: Walk,
    humidity: Walk,
    rng: SmallRng,
    /// The measurement waiting for a read, after a measure command.
    pending: Option<[u8; 6]>,
}

impl SimSht3x {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let temperature = 15.0 + rng.random_range(0.0..10.0);
        let humidity = 35.0 + rng.random_range(0.0..20.0);
        SimSht3x {
            address: Address::Low.bits(),
            temperature: Walk {
                value: temperature,
                mean: temperature,
                step: 0.05,
                min: -40.0,
                max: 125.0,
            },
            humidity: Walk {
                value: humidity,
                mean: humidity,
                step: 0.2,
                min: 0.0,
                max: 100.0,
            },
            rng,
            pending: None,
        }
    }

    fn measure(&mut self) -> [u8; 6] {
        let t = self.temperature.next(&mut self.rng);
        let rh = self.humidity.next(&mut self.rng);
        let t = sht3x::raw_temperature((t * 100.0).round() as i32).to_be_bytes();
        let rh = sht3x::raw_humidity((rh * 100.0).round() as i32).to_be_bytes();
        [t[0], t[1], sht3x::crc8(&t), rh[0], rh[1], sht3x::crc8(&rh)]
    }
}

impl ErrorType for SimSht3x {
    type Error = ErrorKind;
}

impl I2c for SimSht3x {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), ErrorKind> {
        if address != self.address {
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        }
        for operation in operations {
            match operation {
                Operation::Write([0x2C, 0x06]) => self.pending = Some(self.measure()),
                Operation::Write(_) => {
                    return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data));
                }
                Operation::Read(buf) => {
                    // Without a measurement in progress the sensor NACKs the read header.
                    let data = self
                        .pending
                        .take()
                        .ok_or(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address))?;
                    let n = buf.len().min(data.len());
                    buf[..n].copy_from_slice(&data[..n]);
                }
            }
        }
        Ok(())
    }
}

/// The simulator's sensors: temperature and humidity through the SHT3x driver, a barometer,
/// the `seq` counter and the die temperature.
#[derive(Debug)]
pub struct SimBank {
    channels: Vec<ChannelId>,
    sht: Sht3x<SimSht3x>,
    pressure: Walk,
    rng: SmallRng,
    /// Last measured air temperature; the die runs a little warmer.
    last_temperature_centi: i32,
}

impl SimBank {
    /// A bank serving `channels` (ids 1 to 5), seeded for reproducible values.
    #[must_use]
    pub fn new(channels: &[ChannelId], seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5EED_BA2C);
        let pressure = 101_325.0 + rng.random_range(-1500.0..1500.0);
        SimBank {
            channels: channels.to_vec(),
            sht: Sht3x::new(SimSht3x::new(seed), Address::Low),
            pressure: Walk {
                value: pressure,
                mean: pressure,
                step: 4.0,
                min: 87_000.0,
                max: 108_500.0,
            },
            rng,
            last_temperature_centi: 2500,
        }
    }

    /// Die temperature, hundredths of a degree Celsius.
    #[must_use]
    pub fn chip_temp_centi(&self) -> i16 {
        let centi = self.last_temperature_centi + 450;
        i16::try_from(centi).unwrap_or(i16::MAX)
    }
}

impl SensorBank for SimBank {
    type Error = sht3x::Error<ErrorKind>;

    fn sample(
        &mut self,
        seq: u32,
        readings: &mut HVec<Reading, MAX_READINGS>,
    ) -> Result<(), Self::Error> {
        let wants_sht = self
            .channels
            .iter()
            .any(|&c| c == ChannelId::TEMPERATURE || c == ChannelId::HUMIDITY);
        let climate = if wants_sht {
            let m = self.sht.measure()?;
            self.last_temperature_centi = m.temperature_centi;
            Some(m)
        } else {
            None
        };
        let pressure = self.pressure.next(&mut self.rng).round() as i32;
        for &channel in &self.channels {
            let value = match (channel, climate) {
                (ChannelId::TEMPERATURE, Some(m)) => m.temperature_centi,
                (ChannelId::HUMIDITY, Some(m)) => m.humidity_centi,
                (ChannelId::PRESSURE, _) => pressure,
                (ChannelId::SEQ, _) => i32::try_from(seq).unwrap_or(i32::MAX),
                (ChannelId::CHIP_TEMPERATURE, _) => i32::from(self.chip_temp_centi()),
                _ => continue,
            };
            // Cannot fail: the config allows at most MAX_READINGS channels.
            let _ = readings.push(Reading { channel, value });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(readings: &HVec<Reading, MAX_READINGS>, channel: ChannelId) -> i32 {
        readings
            .iter()
            .find(|r| r.channel == channel)
            .unwrap()
            .value
    }

    #[test]
    fn the_simulated_sht3x_is_read_through_the_real_driver_with_valid_crcs() {
        let mut sht = Sht3x::new(SimSht3x::new(7), Address::Low);
        for _ in 0..100 {
            let m = sht.measure().unwrap();
            assert!((-4000..=12500).contains(&m.temperature_centi));
            assert!((0..=10000).contains(&m.humidity_centi));
        }
    }

    #[test]
    fn the_simulated_sht3x_nacks_a_read_without_a_measurement() {
        let mut dev = SimSht3x::new(1);
        assert!(dev.read(0x44, &mut [0u8; 6]).is_err());
        assert!(dev.write(0x45, &[0x2C, 0x06]).is_err());
    }

    #[test]
    fn values_walk_slowly_and_seq_follows_the_sample() {
        let all = [
            ChannelId::TEMPERATURE,
            ChannelId::HUMIDITY,
            ChannelId::PRESSURE,
            ChannelId::SEQ,
        ];
        let mut bank = SimBank::new(&all, 42);
        let mut previous: Option<HVec<Reading, MAX_READINGS>> = None;
        for seq in 1..=200 {
            let mut r = HVec::new();
            bank.sample(seq, &mut r).unwrap();
            assert_eq!(r.len(), 4);
            assert_eq!(value(&r, ChannelId::SEQ), seq as i32);
            if let Some(p) = &previous {
                let dt = value(&r, ChannelId::TEMPERATURE) - value(p, ChannelId::TEMPERATURE);
                let dp = value(&r, ChannelId::PRESSURE) - value(p, ChannelId::PRESSURE);
                assert!(dt.abs() <= 10, "temperature jumped {dt}");
                assert!(dp.abs() <= 50, "pressure jumped {dp}");
            }
            previous = Some(r);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_values() {
        let ch = [ChannelId::TEMPERATURE, ChannelId::PRESSURE];
        let (mut a, mut b) = (SimBank::new(&ch, 3), SimBank::new(&ch, 3));
        for seq in 1..20 {
            let (mut ra, mut rb) = (HVec::new(), HVec::new());
            a.sample(seq, &mut ra).unwrap();
            b.sample(seq, &mut rb).unwrap();
            assert_eq!(ra, rb);
        }
    }
}
