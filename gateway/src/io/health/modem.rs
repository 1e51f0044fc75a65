//! The cellular modem, as ModemManager reports it on D-Bus (`org.freedesktop.ModemManager1`).
//!
//! One call per sample: the ObjectManager's `GetManagedObjects` on
//! `/org/freedesktop/ModemManager1` returns every modem object with its interfaces' properties,
//! so the first object with the `org.freedesktop.ModemManager1.Modem` interface gives `State`
//! (i), `SignalQuality` ((ub)) and `AccessTechnologies` (u), and its
//! `org.freedesktop.ModemManager1.Modem.Modem3gpp` interface `OperatorName` (s). Only
//! properties are read: nothing here asks ModemManager to do anything, and the call carries
//! `NO_AUTO_START`, so a ModemManager that is installed but stopped stays stopped.
//!
//! No bus, no ModemManager or no modem is a [`ModemHealth::none`] with the reason, never an
//! error: the connection is retried at the next sample (one failed `connect` to a missing
//! socket), and the health task logs a change of the modem's state once.

use std::collections::HashMap;
use std::time::Duration;

use outpost_core::config::health::ModemBus;
use outpost_core::health::ModemHealth;
use zbus::zvariant::{OwnedValue, Value};

const SERVICE: &str = "org.freedesktop.ModemManager1";
const ROOT: &str = "/org/freedesktop/ModemManager1";
const MODEM: &str = "org.freedesktop.ModemManager1.Modem";
const MODEM_3GPP: &str = "org.freedesktop.ModemManager1.Modem.Modem3gpp";

/// How long one look may take: a wedged bus costs one sample, not the task.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The bus connection, kept between samples once made.
#[derive(Debug)]
pub struct ModemWatch {
    bus: ModemBus,
    connection: Option<zbus::Connection>,
}

impl ModemWatch {
    #[must_use]
    pub fn new(bus: ModemBus) -> ModemWatch {
        ModemWatch {
            bus,
            connection: None,
        }
    }

    /// What ModemManager says now.
    pub async fn sample(&mut self) -> ModemHealth {
        if self.bus == ModemBus::Off {
            return ModemHealth::none("not asked (health.modem_bus = \"off\")");
        }
        match tokio::time::timeout(QUERY_TIMEOUT, self.query()).await {
            Ok(health) => health,
            Err(_) => {
                self.connection = None;
                ModemHealth::none("the D-Bus did not answer within 3 s")
            }
        }
    }

    async fn query(&mut self) -> ModemHealth {
        let connection = match &self.connection {
            Some(connection) => connection.clone(),
            None => match connect(&self.bus).await {
                Ok(connection) => {
                    self.connection = Some(connection.clone());
                    connection
                }
                Err(error) => return ModemHealth::none(format!("no D-Bus: {error}")),
            },
        };
        match managed_objects(&connection).await {
            Ok(objects) => from_objects(&objects),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown"
                    || name.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
            {
                ModemHealth::none("ModemManager is not running")
            }
            Err(error) => {
                // The bus went away or answered nonsense: connect afresh next time.
                self.connection = None;
                ModemHealth::none(format!("ModemManager did not answer: {error}"))
            }
        }
    }
}

async fn connect(bus: &ModemBus) -> zbus::Result<zbus::Connection> {
    match bus {
        ModemBus::System => zbus::Connection::system().await,
        ModemBus::Address(address) => {
            zbus::connection::Builder::address(address.as_str())?
                .build()
                .await
        }
        ModemBus::Off => Err(zbus::Error::Failure("off".into())),
    }
}

type Properties = HashMap<String, OwnedValue>;
type Objects =
    HashMap<zbus::zvariant::OwnedObjectPath, HashMap<zbus::names::OwnedInterfaceName, Properties>>;

async fn managed_objects(connection: &zbus::Connection) -> zbus::Result<Objects> {
    let proxy = zbus::Proxy::new(
        connection,
        SERVICE,
        ROOT,
        "org.freedesktop.DBus.ObjectManager",
    )
    .await?;
    let objects: Option<Objects> = proxy
        .call_with_flags(
            "GetManagedObjects",
            zbus::proxy::MethodFlags::NoAutoStart.into(),
            &(),
        )
        .await?;
    Ok(objects.unwrap_or_default())
}

/// The first modem (by object path) in ModemManager's objects. A property of the wrong type is
/// read as absent: the bus is an input like any other.
fn from_objects(objects: &Objects) -> ModemHealth {
    let mut modems: Vec<_> = objects
        .iter()
        .filter_map(|(path, interfaces)| {
            let modem = interfaces
                .iter()
                .find(|(name, _)| name.as_str() == MODEM)?
                .1;
            let modem_3gpp = interfaces
                .iter()
                .find(|(name, _)| name.as_str() == MODEM_3GPP)
                .map(|(_, properties)| properties);
            Some((path.as_str(), modem, modem_3gpp))
        })
        .collect();
    modems.sort_by_key(|(path, _, _)| *path);
    let Some((_, modem, modem_3gpp)) = modems.first() else {
        return ModemHealth::none("ModemManager sees no modem");
    };
    let state = modem
        .get("State")
        .and_then(|v| v.downcast_ref::<i32>().ok())
        .unwrap_or(0);
    let signal = modem
        .get("SignalQuality")
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| <(u32, bool)>::try_from(Value::from(v)).ok())
        .unwrap_or((0, false));
    let technologies = modem
        .get("AccessTechnologies")
        .and_then(|v| v.downcast_ref::<u32>().ok())
        .unwrap_or(0);
    let operator = modem_3gpp
        .and_then(|p| p.get("OperatorName"))
        .and_then(|v| v.downcast_ref::<&str>().ok());
    ModemHealth::present(state, signal, technologies, operator)
}
