'use strict';
// Sensirion SHT3x-DIS on I2C0 at 0x44 (datasheet v7, 2022): single-shot measurements with and
// without clock stretching, soft reset, status register. What the node's driver
// (sensor-fw/node/src/sht3x.rs) sends: write 0x2C 0x06, then read 6 bytes
// (T msb, T lsb, CRC, RH msb, RH lsb, CRC).
//
// Timing (datasheet table 4, maximum): a measurement takes 15.5 / 6.5 / 4.5 ms for high / medium
// / low repeatability. With clock stretching the read header is acknowledged and the sensor holds
// SCL until the result is ready; without it the read header is not acknowledged until then.

/** CRC-8, polynomial 0x31, init 0xFF (datasheet 4.12): crc8([0xBE, 0xEF]) == 0x92. */
function crc8(bytes) {
  let crc = 0xff;
  for (const b of bytes) {
    crc ^= b;
    for (let i = 0; i < 8; i++) crc = crc & 0x80 ? ((crc << 1) ^ 0x31) & 0xff : (crc << 1) & 0xff;
  }
  return crc;
}

/** Raw words for a temperature in °C and relative humidity in % (datasheet 4.13, inverted). */
function rawWords(celsius, humidity) {
  const clamp = (x) => Math.min(0xffff, Math.max(0, Math.round(x)));
  return { t: clamp(((celsius + 45) * 65535) / 175), rh: clamp((humidity * 65535) / 100) };
}

function withCrc(...words) {
  const out = [];
  for (const w of words) {
    const bytes = [w >> 8, w & 0xff];
    out.push(...bytes, crc8(bytes));
  }
  return out;
}

/** Single-shot commands: (stretching, duration in ns). */
const SINGLE_SHOT = new Map([
  [0x2c06, { stretch: true, nanos: 15.5e6 }],
  [0x2c0d, { stretch: true, nanos: 6.5e6 }],
  [0x2c10, { stretch: true, nanos: 4.5e6 }],
  [0x2400, { stretch: false, nanos: 15.5e6 }],
  [0x240b, { stretch: false, nanos: 6.5e6 }],
  [0x2416, { stretch: false, nanos: 4.5e6 }],
]);
const SOFT_RESET = 0x30a2;
const READ_STATUS = 0xf32d;
const CLEAR_STATUS = 0x3041;
const STATUS_RESET_DETECTED = 1 << 4;
const STATUS_COMMAND_FAILED = 1 << 1;
const STATUS_CHECKSUM_FAILED = 1 << 0;

/** The sensor, independent of the bus: commands in, bytes out, time from the caller. */
class Sht3xSensor {
  constructor({ celsius = 21.5, humidity = 45 } = {}) {
    this.celsius = celsius;
    this.humidity = humidity;
    this.status = STATUS_RESET_DETECTED;
    this.pending = null; // { readyAt, stretch } while a measurement runs or waits to be read
    this.output = null; // bytes the next read returns
  }

  /** A write transfer: a 16-bit command (two bytes). Returns false to NACK. */
  command(bytes, nowNanos) {
    if (bytes.length !== 2) {
      this.status |= STATUS_COMMAND_FAILED;
      return bytes.length < 2; // the sensor acknowledges bytes until the command is complete
    }
    const code = (bytes[0] << 8) | bytes[1];
    const shot = SINGLE_SHOT.get(code);
    if (shot) {
      this.pending = { readyAt: nowNanos + shot.nanos, stretch: shot.stretch };
      this.output = null;
    } else if (code === SOFT_RESET) {
      this.pending = null;
      this.output = null;
      this.status = STATUS_RESET_DETECTED;
    } else if (code === READ_STATUS) {
      this.output = withCrc(this.status);
    } else if (code === CLEAR_STATUS) {
      this.status &= ~(STATUS_RESET_DETECTED | STATUS_COMMAND_FAILED | STATUS_CHECKSUM_FAILED);
    } else {
      this.status |= STATUS_COMMAND_FAILED;
    }
    return true;
  }

  /**
   * A read header. Returns { ack: false } (no data for the master), or { ack: true, delayNanos }
   * where delayNanos is how long the sensor stretches the clock before the first byte.
   */
  readHeader(nowNanos) {
    if (this.output) return { ack: true, delayNanos: 0 };
    if (!this.pending) return { ack: false };
    const wait = this.pending.readyAt - nowNanos;
    if (wait > 0 && !this.pending.stretch) return { ack: false }; // still measuring
    const { t, rh } = rawWords(this.celsius, this.humidity);
    this.output = withCrc(t, rh);
    this.pending = null;
    return { ack: true, delayNanos: Math.max(0, wait) };
  }

  /** Next data byte of the current read (0xFF past the end, as the idle bus reads). */
  readByte() {
    if (!this.output || !this.output.length) return 0xff;
    return this.output.shift();
  }

  /** The master's STOP: whatever was not read is gone. */
  stop(wasRead) {
    if (wasRead) this.output = null;
  }
}

/**
 * Connects a sensor to an rp2040js RPI2C (its onStart/onConnect/onWriteByte/onReadByte/onStop
 * hooks and complete* calls). `present: false` leaves the bus empty: every address is NACKed.
 */
function attachSht3x(i2c, clock, sensor, { address = 0x44, present = true } = {}) {
  let selected = false;
  let reading = false;
  let written = [];
  const stretchAlarm = clock.createAlarm(() => i2c.completeConnect(true));
  i2c.onStart = () => i2c.completeStart();
  i2c.onConnect = (addr, mode) => {
    selected = present && addr === address;
    reading = mode === 1;
    if (!selected) return i2c.completeConnect(false);
    if (!reading) {
      written = [];
      return i2c.completeConnect(true);
    }
    if (written.length) {
      // A repeated START after a write: the command is complete without a STOP.
      sensor.command(written, clock.nanos);
      written = [];
    }
    const answer = sensor.readHeader(clock.nanos);
    if (!answer.ack) return i2c.completeConnect(false);
    if (answer.delayNanos > 0) stretchAlarm.schedule(answer.delayNanos);
    else i2c.completeConnect(true);
  };
  i2c.onWriteByte = (value) => {
    written.push(value);
    i2c.completeWrite(written.length <= 2);
  };
  i2c.onReadByte = () => i2c.completeRead(sensor.readByte());
  i2c.onStop = () => {
    if (selected && !reading && written.length) sensor.command(written, clock.nanos);
    if (selected && reading) sensor.stop(true);
    selected = false;
    written = [];
    i2c.completeStop();
  };
}

module.exports = { Sht3xSensor, attachSht3x, crc8, rawWords, withCrc };
