//! A simulated three-phase energy meter for `outpost demo --modbus`: a tokio-modbus TCP server
//! on loopback whose registers follow a catalogue map (the Eastron SDM630 by default) and change
//! like a real meter's: mains voltage wandering around 230 V, a load that drifts and steps,
//! power and power factor consistent with them, frequency near 50 Hz.
//!
//! Design: [`MeterModel`] is the physics, IO-free and deterministic for a seed; [`Registers`]
//! turns its values into the map's register image with the same codec the gateway decodes with
//! ([`outpost_core::modbus::value::encode_image`]); [`serve`] is the thin tokio-modbus adapter.

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use outpost_core::modbus::map::{RegisterMap, Table, parse_map};
use outpost_core::modbus::value::{Encoded, Value, encode_image};

/// The map the demo meter serves, compiled into the binary so the demo needs no files.
pub const DEMO_MAP_TEXT: &str = include_str!("../../../config/devices/eastron-sdm630.toml");
/// How the demo names the map in errors and on the status page.
pub const DEMO_MAP_NAME: &str = "devices/eastron-sdm630.toml (built in)";

/// The built-in demo map.
pub fn demo_map() -> anyhow::Result<RegisterMap> {
    parse_map(std::path::Path::new(DEMO_MAP_NAME), DEMO_MAP_TEXT)
        .map_err(|e| anyhow::anyhow!("the built-in demo map is invalid: {e}"))
}

/// A three-phase load on a 230/400 V, 50 Hz supply.
#[derive(Debug)]
pub struct MeterModel {
    rng: SmallRng,
    voltage: [f64; 3],
    /// Per-phase load current the meter drifts towards, and the current now.
    target_current: [f64; 3],
    current: [f64; 3],
    power_factor: [f64; 3],
    frequency: f64,
}

impl MeterModel {
    #[must_use]
    pub fn new(seed: u64) -> MeterModel {
        MeterModel {
            rng: SmallRng::seed_from_u64(seed),
            voltage: [231.2, 229.8, 230.5],
            target_current: [12.0, 9.5, 11.0],
            current: [12.0, 9.5, 11.0],
            power_factor: [0.94, 0.92, 0.95],
            frequency: 50.0,
        }
    }

    /// Advances the model by one second.
    pub fn step(&mut self) {
        for phase in 0..3 {
            self.voltage[phase] =
                (self.voltage[phase] + self.rng.random_range(-0.4..0.4)).clamp(222.0, 238.0);
            // Now and then a machine starts or stops: the load steps.
            if self.rng.random_bool(0.02) {
                self.target_current[phase] = self.rng.random_range(2.0..30.0);
            }
            let pull = (self.target_current[phase] - self.current[phase]) * 0.2;
            self.current[phase] =
                (self.current[phase] + pull + self.rng.random_range(-0.15..0.15)).max(0.0);
            self.power_factor[phase] =
                (self.power_factor[phase] + self.rng.random_range(-0.005..0.005)).clamp(0.80, 0.99);
        }
        self.frequency = (self.frequency + self.rng.random_range(-0.01..0.01)).clamp(49.9, 50.1);
    }

    /// The value of a point, by its catalogue name; `None` for a name the model does not know.
    #[must_use]
    pub fn value(&self, name: &str) -> Option<f64> {
        let phase = |prefix: &str| -> Option<usize> {
            ["l1_", "l2_", "l3_"].iter().position(|p| *p == prefix)
        };
        let per_phase = |quantity: &str, p: usize| -> Option<f64> {
            let (v, i, pf) = (self.voltage[p], self.current[p], self.power_factor[p]);
            Some(match quantity {
                "voltage" => v,
                "current" => i,
                "power" => v * i * pf,
                "apparent_power" => v * i,
                "reactive_power" => v * i * pf.acos().sin(),
                "power_factor" => pf,
                "phase_angle" => pf.acos().to_degrees(),
                _ => return None,
            })
        };
        if let Some(p) = name.get(..3).and_then(phase) {
            return per_phase(&name[3..], p);
        }
        let total = |quantity: &str| (0..3).filter_map(|p| per_phase(quantity, p)).sum::<f64>();
        Some(match name {
            "average_voltage" => self.voltage.iter().sum::<f64>() / 3.0,
            "average_current" => self.current.iter().sum::<f64>() / 3.0,
            "sum_of_currents" => self.current.iter().sum(),
            "total_power" => total("power"),
            "total_apparent_power" => total("apparent_power"),
            "total_reactive_power" => total("reactive_power"),
            "total_power_factor" => total("power") / total("apparent_power"),
            "total_phase_angle" => (total("power") / total("apparent_power"))
                .acos()
                .to_degrees(),
            "frequency" => self.frequency,
            _ => return None,
        })
    }
}

/// A device's register and bit image: what a poll reads.
#[derive(Debug, Default, Clone)]
pub struct Registers {
    pub words: BTreeMap<(Table, u16), u16>,
    pub bits: BTreeMap<(Table, u16), bool>,
}

impl Registers {
    /// Writes every point of `map` the model knows into the image.
    pub fn update(&mut self, map: &RegisterMap, model: &MeterModel) {
        for point in map.points() {
            let Some(value) = model.value(&point.name) else {
                continue;
            };
            match encode_image(point, &Value::Float(value)) {
                Ok(Encoded::Registers(words)) => {
                    for (address, word) in (point.address..).zip(words) {
                        self.words.insert((point.table, address), word);
                    }
                }
                Ok(Encoded::Bit(bit)) => {
                    self.bits.insert((point.table, point.address), bit);
                }
                Err(e) => tracing::debug!("demo meter: {e}"),
            }
        }
    }

    fn read_words(&self, table: Table, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        let end = start
            .checked_add(count)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        Ok((start..end)
            .map(|a| self.words.get(&(table, a)).copied().unwrap_or(0))
            .collect())
    }

    fn read_bits(&self, table: Table, start: u16, count: u16) -> Result<Vec<bool>, ExceptionCode> {
        let end = start
            .checked_add(count)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        Ok((start..end)
            .map(|a| self.bits.get(&(table, a)).copied().unwrap_or(false))
            .collect())
    }

    /// Answers a read; writes are refused, as a meter refuses them.
    pub fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        Ok(match request {
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(self.read_words(Table::Input, *a, *n)?)
            }
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(self.read_words(Table::Holding, *a, *n)?)
            }
            Request::ReadCoils(a, n) => Response::ReadCoils(self.read_bits(Table::Coil, *a, *n)?),
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(self.read_bits(Table::DiscreteInput, *a, *n)?)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        })
    }
}

#[derive(Clone)]
struct MeterService(Arc<Mutex<Registers>>);

impl tokio_modbus::server::Service for MeterService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let registers = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ready(registers.answer(&request.request))
    }
}

/// Serves a simulated meter on a loopback port until `shutdown`; returns its address.
pub async fn serve(
    map: Arc<RegisterMap>,
    seed: u64,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let registers = Arc::new(Mutex::new(Registers::default()));
    let mut model = MeterModel::new(seed);
    registers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .update(&map, &model);

    let image = Arc::clone(&registers);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            model.step();
            image
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .update(&map, &model);
        }
    });

    let server = Server::new(listener);
    let service = MeterService(registers);
    let on_connected = move |stream, socket_addr| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone()))) }
    };
    tokio::spawn(async move {
        let on_error = |e| tracing::debug!("demo meter connection: {e}");
        let _ = server
            .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
            .await;
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_core::modbus::value::{Raw, decode};

    #[test]
    fn the_model_stays_physical_over_a_day() {
        let mut model = MeterModel::new(7);
        for _ in 0..86_400 {
            model.step();
            let v = model.value("l1_voltage").unwrap();
            let p = model.value("total_power").unwrap();
            let s = model.value("total_apparent_power").unwrap();
            let pf = model.value("total_power_factor").unwrap();
            assert!((222.0..=238.0).contains(&v), "{v}");
            assert!(p >= 0.0 && p <= s + 1e-9, "{p} {s}");
            assert!((0.79..=1.0).contains(&pf), "{pf}");
            assert!((49.9..=50.1).contains(&model.value("frequency").unwrap()));
        }
    }

    #[test]
    fn every_point_of_the_demo_map_is_simulated_and_decodes_to_the_model_value() {
        let map = demo_map().unwrap();
        let model = MeterModel::new(1);
        let mut registers = Registers::default();
        registers.update(&map, &model);
        for point in map.points() {
            let expected = model
                .value(&point.name)
                .unwrap_or_else(|| panic!("the model does not simulate `{}`", point.name));
            let words = registers
                .read_words(point.table, point.address, point.size())
                .unwrap();
            let Value::Float(got) = decode(point, Raw::Registers(&words)).unwrap() else {
                panic!("{} is not a float", point.name);
            };
            // f32 registers: 24 bits of mantissa.
            assert!(
                (got - expected).abs() <= expected.abs() * 1e-6,
                "{}: {got} vs {expected}",
                point.name
            );
        }
    }
}
