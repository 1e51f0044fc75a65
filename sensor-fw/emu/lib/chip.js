'use strict';
// One power-on or reset of the RP2040: a fresh rp2040js chip wired to the parts that outlive it
// (the flash and its file, the serial lines, the sensor) and to the models that replace or
// complete rp2040js 1.4.1's peripherals.

const { RP2040 } = require('rp2040js');
const { Pl011 } = require('./uart');
const { SsiFlashPort } = require('./ssi-flash');
const { Rosc, VregAndChipReset, XipCtrl, IoQspi } = require('./small-blocks');
const { attachSht3x } = require('./sht3x');
const { RomShim } = require('./rom-shim');

const AIRCR = 0xd0c;
const AIRCR_VECTKEY = 0x05fa;
const AIRCR_SYSRESETREQ = 1 << 2;
const WATCHDOG_REASON_TIMER = 1 << 0;
const WATCHDOG_REASON_FORCE = 1 << 1;
const IRQ_UART0 = 20;
const IRQ_UART1 = 21;
const DREQ_UART0 = { tx: 20, rx: 21 };
const DREQ_UART1 = { tx: 22, rx: 23 };
const ADC_TEMPERATURE_CHANNEL = 4;
const WATCHDOG_TICK_NANOS = 1000;

/** The ADC reading of the temperature sensor at `celsius` (datasheet 4.9.5: 0.706 V at 27 °C, -1.721 mV/°C). */
function temperatureAdcCode(celsius) {
  const volts = 0.706 - (celsius - 27) * 0.001721;
  return Math.min(4095, Math.max(0, Math.round((volts / 3.3) * 4096)));
}

/** The core stopped where a real one would fault or halt. */
class Lockup extends Error {}

/** rp2040js logs through console.*, which would mix into stdout; this sends it to `note`. */
class NoteLogger {
  constructor(note, verbose) {
    this.note = note;
    this.verbose = verbose;
  }
  debug() {}
  info(component, message) {
    // rp2040js 1.4.1 decodes SEV but only logs it. On the core SEV also sets its own event
    // register, so the next WFE falls through: embassy's executor pends itself with SEV when a
    // task wakes itself during a poll (a timer already expired), then WFEs. Without this the core
    // sleeps until some unrelated interrupt, or until the watchdog resets it.
    if (message === 'SEV' && this.core) this.core.eventRegistered = true;
  }
  warn(component, message) {
    // An instruction rp2040js cannot decode is what a real core would fault on: stop there.
    if (/is not implemented yet/.test(message)) throw new Lockup(message);
    if (this.verbose) this.note(`${component}: ${message}`);
  }
  error(component, message) {
    this.note(`${component}: ${message}`);
  }
}

/**
 * @param {object} parts
 * @param {import('./ssi-flash').SerialFlash} parts.flash
 * @param {import('./rom-shim').RomShim} parts.rom
 * @param {import('./uart').SerialLine[]} parts.lines UART0 and UART1 lines
 * @param {import('./sht3x').Sht3xSensor} parts.sensor
 * @param {{present: boolean, chipCelsius: number, verbose: boolean}} parts.options
 * @param {{watchdogReason: number, scratch: Uint32Array, chipReset: number}} parts.resetState
 * @param {(kind: string) => void} parts.requestReset called inside an instruction; the runner acts after it
 * @param {(message: string) => void} parts.note
 * @param {(code: number, pc: number) => void} [parts.onBreak] a BKPT or UDF outside the ROM
 */
function createChip({ flash, rom, lines, sensor, options, resetState, requestReset, note, onBreak }) {
  const mcu = new RP2040();
  const logger = new NoteLogger(note, options.verbose);
  mcu.logger = logger;
  logger.core = mcu.core;

  // The flash outlives the chip: point rp2040js's XIP window at the file's bytes.
  const xip = flash.file.xip;
  mcu.flash = xip;
  mcu.flash16 = new Uint16Array(xip.buffer);
  mcu.flashView = new DataView(xip.buffer);
  const originalWrite = mcu.writeUint32;
  let xipWriteNoted = false;
  mcu.writeUint32 = function (address, value) {
    address >>>= 0;
    if (address >= 0x10000000 && address < 0x14000000) {
      // A store to the XIP window does not reach the flash chip on the RP2040.
      if (!xipWriteNoted) note(`store to flash address 0x${address.toString(16)} through XIP ignored (flash changes only through erase/program)`);
      xipWriteNoted = true;
      return;
    }
    originalWrite.call(this, address, value);
  };

  const uart = [
    new Pl011(mcu, 'UART0', IRQ_UART0, DREQ_UART0, lines[0], note),
    new Pl011(mcu, 'UART1', IRQ_UART1, DREQ_UART1, lines[1], note),
  ];
  mcu.uart = uart;
  mcu.peripherals[0x40034] = uart[0];
  mcu.peripherals[0x40038] = uart[1];

  const ssi = new SsiFlashPort(mcu, 'SSI', flash);
  mcu.peripherals[0x18000] = ssi;
  mcu.peripherals[0x40018] = new IoQspi(mcu, ssi);
  mcu.peripherals[0x14000] = new XipCtrl(mcu);
  mcu.peripherals[0x40060] = new Rosc(mcu);
  mcu.peripherals[0x40064] = new VregAndChipReset(mcu, resetState.chipReset);

  const watchdog = mcu.peripherals[0x40058];
  watchdog.reason = resetState.watchdogReason;
  watchdog.scratchData.set(resetState.scratch);
  // rp2040js fires the timer alarm the instant the watchdog is enabled with a counter of 0, and
  // re-arms it at the same instant forever. On the chip the counter is only checked on a tick
  // (1 us), so embassy-rp's trigger_reset (enable, then CTRL.TRIGGER on the next instruction,
  // counter never loaded) is a FORCE reset. A timeout therefore takes effect one tick later, and a
  // TRIGGER in between wins.
  const timeoutReset = mcu.clock.createAlarm(() => requestReset('watchdog-timer'));
  watchdog.onWatchdogTrigger = () => {
    watchdog.alarm.enable = false;
    if (watchdog.reason & WATCHDOG_REASON_FORCE) requestReset('watchdog-force');
    else if (!timeoutReset.scheduled) timeoutReset.schedule(WATCHDOG_TICK_NANOS);
  };

  const ppbRead = mcu.ppb.readUint32.bind(mcu.ppb);
  const ppbWrite = mcu.ppb.writeUint32.bind(mcu.ppb);
  mcu.ppb.readUint32 = (offset) => (offset === AIRCR ? 0xfa050000 : ppbRead(offset));
  mcu.ppb.writeUint32 = (offset, value) => {
    if (offset === AIRCR) {
      if (value >>> 16 === AIRCR_VECTKEY && value & AIRCR_SYSRESETREQ) requestReset('sysresetreq');
      return;
    }
    ppbWrite(offset, value);
  };

  for (const i2c of mcu.i2c) patchI2cAbort(i2c);
  attachSht3x(mcu.i2c[0], mcu.clock, sensor, { present: options.present });
  mcu.adc.channelValues[ADC_TEMPERATURE_CHANNEL] = temperatureAdcCode(options.chipCelsius);

  rom.install(mcu);
  mcu.onBreak = (code) => {
    const pc = (mcu.core.PC - 2) >>> 0; // rp2040js reports BKPT/UDF with PC already past it
    if (RomShim.owns(pc)) rom.service(mcu, code);
    else if (onBreak) onBreak(code, pc);
    else throw new Lockup(`BKPT/UDF #0x${code.toString(16)} at PC 0x${pc.toString(16)}`);
  };
  mcu.core.reset(); // SP and PC from the ROM's vector table: the reset stub runs the boot path
  return { mcu, logger, watchdog, uart, ssi };
}

/**
 * rp2040js 1.4.1's I2C raises TX_EMPTY only when it pulls a command from the TX FIFO; an abort
 * (an address nobody acknowledges) empties the FIFO without raising it. On the chip TX_EMPTY is a
 * level (FIFO at or below its threshold), so after an abort it reads 1, and embassy-rp's blocking
 * write waits for exactly that before it reads the abort reason: without this, a board whose
 * sensor is missing spins until the watchdog resets it, which real silicon does not do.
 */
function patchI2cAbort(i2c) {
  const TX_EMPTY = 1 << 4;
  const abort = i2c.abort.bind(i2c);
  i2c.abort = (reason) => {
    abort(reason);
    i2c.setInterrupts(TX_EMPTY);
  };
}

module.exports = { createChip, Lockup, temperatureAdcCode, WATCHDOG_REASON_TIMER, WATCHDOG_REASON_FORCE };
