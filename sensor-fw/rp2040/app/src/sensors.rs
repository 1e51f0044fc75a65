//! The board's sensors as the core's [`SensorBank`]: an SHT3x on I2C0 (GP4 SDA, GP5 SCL) for
//! temperature and humidity, the RP2040's own temperature sensor on ADC channel 4, and the
//! sample's sequence number.

use embassy_rp::adc::{self, Adc, Channel};
use embassy_rp::i2c::{self, I2c};
use embassy_rp::peripherals::I2C0;
use heapless::Vec;
use outpost_node::SensorBank;
use outpost_node::sht3x::{Address, Sht3x};
use outpost_proto::wire::MAX_READINGS;
use outpost_proto::{ChannelId, Reading};

/// The channels this board samples, in the order the readings are sent.
pub const CHANNELS: [ChannelId; 4] = [
    ChannelId::TEMPERATURE,
    ChannelId::HUMIDITY,
    ChannelId::CHIP_TEMPERATURE,
    ChannelId::SEQ,
];

/// The ADC's reference: the board's 3.3 V rail.
const VREF_MICROVOLTS: u32 = 3_300_000;

/// The temperature sensor's transfer function (RP2040 datasheet §4.9.5): 0.706 V at 27 °C,
/// falling 1.721 mV per degree. Hundredths of a degree from a 12-bit reading.
pub fn chip_temp_centi(raw: u16) -> i16 {
    let microvolts = i64::from(raw) * i64::from(VREF_MICROVOLTS) / 4096;
    let centi = 2700 - (microvolts - 706_000) * 100 / 1721;
    i16::try_from(centi).unwrap_or(if centi < 0 { i16::MIN } else { i16::MAX })
}

/// Why a sample failed: only the ADC failing loses a whole sample.
#[derive(Debug)]
pub struct AdcFailed;

pub struct BoardBank {
    sht3x: Sht3x<I2c<'static, I2C0, i2c::Blocking>>,
    adc: Adc<'static, adc::Blocking>,
    temp_sensor: Channel<'static>,
    chip_temp_centi: i16,
    /// SHT3x measurements that failed (the sample goes without those channels).
    pub sht3x_errors: u32,
}

impl BoardBank {
    pub fn new(
        i2c: I2c<'static, I2C0, i2c::Blocking>,
        adc: Adc<'static, adc::Blocking>,
        temp_sensor: Channel<'static>,
    ) -> Self {
        BoardBank {
            sht3x: Sht3x::new(i2c, Address::Low),
            adc,
            temp_sensor,
            chip_temp_centi: 0,
            sht3x_errors: 0,
        }
    }

    /// The die temperature at the last sample, for HEALTH.
    pub fn chip_temp_centi(&self) -> i16 {
        self.chip_temp_centi
    }
}

impl SensorBank for BoardBank {
    type Error = AdcFailed;

    fn sample(
        &mut self,
        seq: u32,
        readings: &mut Vec<Reading, MAX_READINGS>,
    ) -> Result<(), AdcFailed> {
        let raw = self
            .adc
            .blocking_read(&mut self.temp_sensor)
            .map_err(|_| AdcFailed)?;
        self.chip_temp_centi = chip_temp_centi(raw);
        // A missing or failing SHT3x leaves its two channels out; the sample still counts.
        match self.sht3x.measure() {
            Ok(m) => {
                let _ = readings.push(Reading {
                    channel: ChannelId::TEMPERATURE,
                    value: m.temperature_centi,
                });
                let _ = readings.push(Reading {
                    channel: ChannelId::HUMIDITY,
                    value: m.humidity_centi,
                });
            }
            Err(_) => self.sht3x_errors = self.sht3x_errors.wrapping_add(1),
        }
        let _ = readings.push(Reading {
            channel: ChannelId::CHIP_TEMPERATURE,
            value: i32::from(self.chip_temp_centi),
        });
        let _ = readings.push(Reading {
            channel: ChannelId::SEQ,
            value: i32::try_from(seq).unwrap_or(i32::MAX),
        });
        Ok(())
    }
}
