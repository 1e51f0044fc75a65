//! Outpost's sensor node firmware for the RP2040: the `outpost-node` core ([`App`] over
//! [`NodeLink`] with the OTA [`Updater`]) on the board's peripherals. This file only moves bytes
//! and hands the core time; every decision is the core's (docs/firmware.md).
//!
//! At boot: why the chip reset (its registers and the cause the last boot left, [`reset`]), the
//! watchdog, the flash's unique id (the node's uid), 32 bytes from the ring oscillator for the
//! handshakes and, at the first boot only, for the identity key kept in flash
//! ([`outpost_node::settings`]); the updater reads STATE and its record (a trial, a revert); the
//! boot goes into the reset history. Then one loop: UART0 bytes in, due timers, frames out,
//! the watchdog fed, and a reset when the core asks for one.

#![no_std]
#![no_main]

#[cfg(feature = "dev")]
mod console;
mod marks;
mod reset;
mod sensors;
mod stack;

use core::cell::RefCell;

use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_executor::Spawner;
use embassy_rp::adc::{self, Adc, Channel};
use embassy_rp::bind_interrupts;
use embassy_rp::clocks::RoscRng;
use embassy_rp::flash::{Blocking, Flash};
use embassy_rp::i2c::{self, I2c};
use embassy_rp::peripherals::{FLASH, UART0};
use embassy_rp::uart::{self, BufferedInterruptHandler, BufferedUart};
use embassy_rp::watchdog::Watchdog;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_time::{Duration, Instant, with_deadline};
use embedded_io_async::{Read, Write};
use heapless::{String, Vec};
use outpost_node::boot::layout::{self, Region};
use outpost_node::boot::{EmbassyBoot, RecordSector};
use outpost_node::link::{BoardStatus, Boot, Identity, LinkConfig, NodeLink, Secrets};
use outpost_node::ota::{OtaAction, OtaConfig, Updater};
use outpost_node::settings::{self, Settings, SettingsStore};
use outpost_node::{App, Schedule, diag};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::{FwVersion, Millis, ResetReason};
use static_cell::StaticCell;

use crate::reset::Cause;
use crate::sensors::{BoardBank, CHANNELS};

include!(concat!(env!("OUT_DIR"), "/build_config.rs"));

bind_interrupts!(struct Irqs {
    UART0_IRQ => BufferedInterruptHandler<UART0>;
});

#[cfg(feature = "dev")]
bind_interrupts!(struct ConsoleIrqs {
    UART1_IRQ => BufferedInterruptHandler<embassy_rp::peripherals::UART1>;
});

const FLASH_SIZE: usize = layout::FLASH_SIZE as usize;
/// Samples held for the gateway while the link is down (8 minutes at 1 Hz).
const RING: usize = 512;
/// The node link's line speed.
const BAUD: u32 = 115_200;
/// The watchdog's period: the loop feeds it at least every [`FEED_EVERY`].
const WATCHDOG: Duration = Duration::from_secs(8);
const FEED_EVERY: u64 = 1_000;
/// How often the free stack is counted, ms.
const STACK_CHECK_EVERY: u64 = 5_000;
/// Stack the board's own check wants left before a trial image may confirm.
const STACK_FREE_NEEDED: u32 = 2 * 1024;

type SharedFlash = Mutex<NoopRawMutex, RefCell<Flash<'static, FLASH, Blocking, FLASH_SIZE>>>;
type Partition =
    BlockingPartition<'static, NoopRawMutex, Flash<'static, FLASH, Blocking, FLASH_SIZE>>;
type BoardUpdater =
    Updater<EmbassyBoot<Partition, Partition>, RecordSector<Partition>, RecordSector<Partition>>;
type BoardApp = App<BoardBank, RING, BoardUpdater>;

static FLASH_CELL: StaticCell<SharedFlash> = StaticCell::new();
static APP: StaticCell<BoardApp> = StaticCell::new();
static UART_TX: StaticCell<[u8; 1024]> = StaticCell::new();
static UART_RX: StaticCell<[u8; 4096]> = StaticCell::new();
#[cfg(feature = "dev")]
static CONSOLE_TX: StaticCell<[u8; 512]> = StaticCell::new();
#[cfg(feature = "dev")]
static CONSOLE_RX: StaticCell<[u8; 64]> = StaticCell::new();

fn now() -> Millis {
    Millis(Instant::now().as_millis())
}

#[embassy_executor::main]
async fn main(_spawner: Spawner) {
    stack::paint();
    let p = embassy_rp::init(Default::default());

    // Why the last boot ended, before anything resets the chip again; then the watchdog the
    // bootloader started, now with the application's period.
    let mut watchdog = Watchdog::new(p.WATCHDOG);
    let previous = reset::take(&mut watchdog);
    watchdog.start(WATCHDOG);

    let mut flash = Flash::<_, Blocking, FLASH_SIZE>::new_blocking(p.FLASH);
    let mut uid = [0u8; 8];
    // A flash that cannot say its id still boots; the gateway sees uid 0 and an operator can
    // tell such a node apart by its key.
    let _ = flash.blocking_unique_id(&mut uid);
    let flash: &'static SharedFlash = FLASH_CELL.init(Mutex::new(RefCell::new(flash)));
    let partition = |region: Region| BlockingPartition::new(flash, region.offset, region.size);

    let mut entropy = conditioned_entropy();
    let mut key_entropy = conditioned_entropy();
    let boot_id = u32::from_le_bytes([entropy[28], entropy[29], entropy[30], entropy[31]]);

    // The identity key: made once, at the first boot, from the ring oscillator. If the
    // settings sectors cannot be written, this boot runs on the fresh key (and the gateway
    // sees a new identity), rather than not at all.
    let mut store = SettingsStore::new(
        RecordSector::new(partition(layout::NODE_CONFIG_A)),
        RecordSector::new(partition(layout::NODE_CONFIG_B)),
    );
    let settings = settings::provision(&mut store, key_entropy)
        .map(|(settings, _)| settings)
        .unwrap_or(Settings {
            secret_key: key_entropy,
            gateway_key: None,
        });
    key_entropy.fill(0);

    let updater = Updater::new(
        now(),
        EmbassyBoot::new(partition(layout::DFU), partition(layout::BOOTLOADER_STATE)),
        RecordSector::new(partition(layout::OTA_RECORD)),
        RecordSector::new(partition(layout::FLOOR_LOG)),
        OtaConfig {
            keys: Vec::from_slice(&FLEET_KEYS).unwrap_or_default(),
            hw_rev: HW_REV,
            running: VERSION,
            built_in_floor: FwVersion::default(),
        },
        previous.last_reset,
    );
    let reset_reason = if updater.reverted_boot() {
        ResetReason::OtaRevert
    } else if updater.on_trial() {
        ResetReason::OtaApply
    } else {
        previous.reason
    };
    // Once per boot, before the link starts: the one flash write the history costs.
    let mut history_sector = RecordSector::new(partition(layout::RESET_HISTORY));
    let history = diag::record_boot(&mut history_sector, reset_reason, VERSION)
        .or_else(|_| diag::read_history(&mut history_sector).map(|(history, _)| history))
        .unwrap_or_default();

    let link = NodeLink::with_ota(
        now(),
        Identity {
            uid,
            hw_rev: HW_REV,
            fw: VERSION,
            lot: String::new(),
            channels: Vec::from_slice(&CHANNELS).unwrap_or_default(),
        },
        Secrets {
            signing_key: ed25519_dalek::SigningKey::from_bytes(&settings.secret_key),
            gateway_key: settings.gateway_key,
            entropy,
        },
        Boot {
            boot_id,
            reset_reason,
        },
        LinkConfig {
            ring_limit: RING,
            ..LinkConfig::default()
        },
        updater,
    );
    entropy.fill(0);

    let i2c = I2c::new_blocking(p.I2C0, p.PIN_5, p.PIN_4, i2c::Config::default());
    let adc = Adc::new_blocking(p.ADC, adc::Config::default());
    let temp_sensor = Channel::new_temp_sensor(p.ADC_TEMP_SENSOR);
    let bank = BoardBank::new(i2c, adc, temp_sensor);
    let schedule = Schedule {
        interval: core::time::Duration::from_millis(SAMPLE_INTERVAL_MS),
        limit: None,
    };
    let app = APP.init(App::new(now(), link, bank, schedule));
    app.link_mut().set_reset_history(history);

    let mut config = uart::Config::default();
    config.baudrate = BAUD;
    let mut uart = BufferedUart::new(
        p.UART0,
        p.PIN_0,
        p.PIN_1,
        Irqs,
        UART_TX.init([0; 1024]),
        UART_RX.init([0; 4096]),
        config,
    );

    #[cfg(feature = "dev")]
    let mut console = {
        let mut config = uart::Config::default();
        config.baudrate = BAUD;
        let uart = BufferedUart::new(
            p.UART1,
            p.PIN_8,
            p.PIN_9,
            ConsoleIrqs,
            CONSOLE_TX.init([0; 512]),
            CONSOLE_RX.init([0; 64]),
            config,
        );
        let mut console = console::Console::new(uart);
        print_status(&mut console, app).await;
        console
    };

    let mut rx = [0u8; 256];
    let mut frame = [0u8; MAX_FRAME_LEN];
    let mut stack_free_min = stack::free_min();
    let mut stack_checked_at = now().0;
    loop {
        let wake = app
            .poll_timeout()
            .map_or(u64::MAX, |at| at.0)
            .min(now().0 + FEED_EVERY);
        if let Ok(Ok(n)) = with_deadline(Instant::from_millis(wake), uart.read(&mut rx)).await {
            marks::start(marks::BYTES_IN);
            app.handle_bytes(now(), &rx[..n]);
            marks::end(marks::BYTES_IN, n as u32);
        }
        // Line errors (overrun, framing, break) lose bytes the link's framing resynchronises
        // past and counts: nothing to do here.
        watchdog.feed(WATCHDOG);

        marks::start(marks::TIMERS_OUT);
        let t = now();
        if app.poll_timeout().is_some_and(|at| at <= t) {
            app.handle_timeout(t);
            // Counting the painted stack reads up to 180 KiB: once every few seconds is enough
            // for HEALTH and the trial's check.
            if t.0 >= stack_checked_at + STACK_CHECK_EVERY {
                stack_checked_at = t.0;
                stack_free_min = stack::free_min();
            }
            let chip_temp_centi = app.bank().chip_temp_centi();
            app.link_mut().set_board_status(BoardStatus {
                stack_free_min,
                chip_temp_centi,
            });
            app.set_board_ok(board_ok(stack_free_min));
        }
        let mut frames = 0;
        while let Some(len) = app.poll_transmit(&mut frame) {
            frames += 1;
            // Waits for room in the UART's buffer: the line paces the core.
            let _ = uart.write_all(&frame[..len]).await;
        }
        marks::end(marks::TIMERS_OUT, frames);

        // One way out of a boot: what the core (or the dev console) asked for, once the UART
        // has sent everything, so the gateway has the answer to a REBOOT.
        let mut reset_for = app.poll_reset(now()).map(|action| match action {
            OtaAction::ResetToInstall => Cause::Install,
            OtaAction::ResetToRevert { cause } => Cause::Revert(cause),
        });
        if app.poll_reboot() {
            reset_for = Some(Cause::Requested);
        }
        #[cfg(feature = "dev")]
        {
            console.print_log(app.link().log()).await;
            match console.poll(&mut store).await {
                console::Request::None => {}
                console::Request::Status => print_status(&mut console, app).await,
                console::Request::Reboot => reset_for = Some(Cause::Requested),
            }
        }
        if let Some(cause) = reset_for {
            let _ = uart.flush().await;
            reset::reset(&mut watchdog, cause);
        }
    }
}

/// 32 bytes for keys from the ring oscillator. Its raw bits are biased and correlated from one
/// read to the next, so 512 raw bytes (4,096 bits, for 256 bits out) are condensed with SHA-256.
fn conditioned_entropy() -> [u8; 32] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut raw = [0u8; 64];
    for _ in 0..8 {
        RoscRng.fill_bytes(&mut raw);
        hasher.update(raw);
    }
    raw.fill(0);
    hasher.finalize().into()
}

/// The development console's `status` line.
#[cfg(feature = "dev")]
async fn print_status(console: &mut console::Console, app: &BoardApp) {
    let link = app.link();
    let identity = link.identity();
    let fw = identity.fw;
    console
        .print(format_args!(
            "outpost-node {}.{}.{}-dev uid {} key {} reset {} link {:?} held {} samples {}",
            fw.major,
            fw.minor,
            fw.patch,
            Hex(&identity.uid),
            Hex(&link.public_key()),
            link.boot().reset_reason.as_str(),
            link.state(),
            link.held(),
            app.samples_taken(),
        ))
        .await;
}

/// Bytes as lowercase hex, for the console.
#[cfg(feature = "dev")]
struct Hex<'a>(&'a [u8]);

#[cfg(feature = "dev")]
impl core::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The board's own verdict, which a trial image needs before it confirms: enough stack left.
/// (The watchdog is running by construction: it was started above and cannot be stopped
/// without this code.)
fn board_ok(stack_free_min: u32) -> bool {
    !cfg!(feature = "test-never-confirm") && stack_free_min >= STACK_FREE_NEEDED
}

#[cortex_m_rt::exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    reset::reset_after_fault()
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    reset::reset_after_fault()
}
