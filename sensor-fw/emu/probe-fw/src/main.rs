//! Probe firmware for the Outpost RP2040 emulator harness: one command byte per peripheral the
//! harness models, answers on UART0 (BufferedUart, 115200). Every other byte is echoed.
#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_rp::{
    adc::{self, Adc, Channel},
    bind_interrupts,
    clocks::RoscRng,
    flash::{Blocking, Flash},
    i2c::{self, I2c},
    peripherals::{FLASH, UART0},
    uart::{BufferedInterruptHandler, BufferedUart, Config},
    watchdog::{ResetReason, Watchdog},
};
use embassy_time::{Duration, Timer};
use embedded_io_async::{Read, Write};
use panic_halt as _;

bind_interrupts!(struct Irqs {
    UART0_IRQ => BufferedInterruptHandler<UART0>;
});

const FLASH_SIZE: usize = 2 * 1024 * 1024;
const PROBE_OFFSET: u32 = 0x1F_0000;

struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line { buf: [0; 160], len: 0 }
    }
    fn s(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            self.buf[self.len] = b;
            self.len += 1;
        }
        self
    }
    fn hex(&mut self, bytes: &[u8]) -> &mut Self {
        const H: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            self.buf[self.len] = H[(b >> 4) as usize];
            self.buf[self.len + 1] = H[(b & 15) as usize];
            self.len += 2;
        }
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.hex(&v.to_be_bytes())
    }
    fn dec(&mut self, mut v: u32) -> &mut Self {
        let mut d = [0u8; 10];
        let mut n = 0;
        loop {
            d[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            self.buf[self.len] = d[n];
            self.len += 1;
        }
        self
    }
    fn end(&mut self) -> &[u8] {
        self.s("\r\n");
        &self.buf[..self.len]
    }
}

fn chip_reset() -> u32 {
    unsafe { core::ptr::read_volatile(0x4006_4008 as *const u32) }
}

#[embassy_executor::main]
async fn main(_spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    static mut TXB: [u8; 256] = [0; 256];
    static mut RXB: [u8; 64] = [0; 64];
    let mut cfg = Config::default();
    cfg.baudrate = 115200;
    #[allow(static_mut_refs)]
    let mut uart = BufferedUart::new(p.UART0, p.PIN_0, p.PIN_1, Irqs, unsafe { &mut TXB }, unsafe { &mut RXB }, cfg);
    let mut watchdog = Watchdog::new(p.WATCHDOG);
    let mut flash: Flash<'_, FLASH, Blocking, FLASH_SIZE> = Flash::new_blocking(p.FLASH);
    let mut adc = Adc::new_blocking(p.ADC, adc::Config::default());
    let mut temp = Channel::new_temp_sensor(p.ADC_TEMP_SENSOR);
    let mut i2c = I2c::new_blocking(p.I2C0, p.PIN_5, p.PIN_4, i2c::Config::default());

    let reason = match watchdog.reset_reason() {
        Some(ResetReason::Forced) => "forced",
        Some(ResetReason::TimedOut) => "timeout",
        None => "none",
    };
    let scratch0 = watchdog.get_scratch(0);
    let mut l = Line::new();
    l.s("probe up reason=").s(reason).s(" chip_reset=").u32(chip_reset()).s(" scratch0=").u32(scratch0);
    let _ = uart.write_all(l.end()).await;

    let mut buf = [0u8; 1];
    loop {
        let Ok(n) = uart.read(&mut buf).await else { continue };
        if n == 0 {
            continue;
        }
        let mut l = Line::new();
        match buf[0] {
            b'u' => {
                let mut uid = [0u8; 8];
                let _ = flash.blocking_unique_id(&mut uid);
                let jedec = flash.blocking_jedec_id().unwrap_or(0);
                l.s("uid=").hex(&uid).s(" jedec=").u32(jedec);
            }
            b'r' => {
                let mut r = [0u8; 8];
                for b in r.iter_mut() {
                    *b = RoscRng::next_u8();
                }
                l.s("rng=").hex(&r);
            }
            b't' => {
                let v = adc.blocking_read(&mut temp).unwrap_or(0xffff);
                l.s("adc4=").dec(v as u32);
            }
            b's' => {
                let mut d = [0u8; 6];
                let r = i2c.blocking_write(0x44u8, &[0x2C, 0x06]).and_then(|_| i2c.blocking_read(0x44u8, &mut d));
                match r {
                    Ok(()) => l.s("sht=").hex(&d),
                    Err(_) => l.s("sht=err"),
                };
            }
            b'w' => {
                watchdog.set_scratch(0, 0xC0FF_EE01);
                let _ = uart.write_all(b"reset forced\r\n").await;
                let _ = uart.flush().await;
                watchdog.trigger_reset();
                loop {}
            }
            b'd' => {
                watchdog.set_scratch(0, 0xC0FF_EE02);
                watchdog.start(Duration::from_millis(500));
                let _ = uart.write_all(b"starving the watchdog\r\n").await;
                Timer::after_secs(100).await;
            }
            b'a' => {
                watchdog.set_scratch(0, 0xC0FF_EE03);
                let _ = uart.write_all(b"sysresetreq\r\n").await;
                let _ = uart.flush().await;
                cortex_m::peripheral::SCB::sys_reset();
            }
            b'p' => {
                let mut page = [0u8; 256];
                for (i, b) in page.iter_mut().enumerate() {
                    *b = i as u8;
                }
                page[..6].copy_from_slice(b"probe!");
                let e = flash.blocking_erase(PROBE_OFFSET, PROBE_OFFSET + 4096).is_ok();
                let w = flash.blocking_write(PROBE_OFFSET, &page).is_ok();
                l.s(if e && w { "prog ok" } else { "prog failed" });
            }
            b'f' => {
                let mut d = [0u8; 8];
                let _ = flash.blocking_read(PROBE_OFFSET, &mut d);
                l.s("flash=").hex(&d);
            }
            b'b' => {
                let mut sum: u32 = 0;
                unsafe { core::arch::asm!("bkpt #0x70", in("r0") 7u32) };
                for i in 0..1000u32 {
                    sum = core::hint::black_box(sum.wrapping_add(i));
                }
                unsafe { core::arch::asm!("bkpt #0x71", in("r0") 7u32, in("r1") sum) };
                l.s("marks done sum=").dec(sum);
            }
            b'k' => {
                unsafe { core::arch::asm!("bkpt #0x42") };
                l.s("after bkpt");
            }
            b'x' => {
                for _ in 0..10 {
                    let _ = uart.write_all(&[b'X'; 100]).await;
                }
                l.s("").s("burst done");
            }
            other => {
                let _ = uart.write_all(&[other]).await;
                continue;
            }
        }
        let _ = uart.write_all(l.end()).await;
    }
}
