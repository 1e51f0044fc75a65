'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { FR_BUSY, FR_TXFF, FR_TXFE, FR_RXFE, FR_RXFF, INT_TX, INT_RX, INT_RT } = require('../lib/uart');
const { chipIn } = require('../testing/fixtures');

const UART0 = 0x40034000;
const DR = UART0 + 0x00;
const FR = UART0 + 0x18;
const LCR_H = UART0 + 0x2c;
const CR = UART0 + 0x30;
const IMSC = UART0 + 0x38;
const RIS = UART0 + 0x3c;
const ICR = UART0 + 0x44;
const DMACR = UART0 + 0x48;
const IFLS = UART0 + 0x34;
const RSR = UART0 + 0x04;
const BYTE_NS = 10e9 / 115200; // 8N1 at 115200: 86.8 us per byte

/** UART0 enabled with FIFOs, 8N1, as embassy-rp sets it up. */
function uartChip(t, options) {
  const chip = chipIn(t, options);
  chip.mcu.writeUint32(LCR_H, (3 << 5) | (1 << 4));
  chip.mcu.writeUint32(CR, (1 << 9) | (1 << 8) | 1);
  return chip;
}

test('registers rp2040js read as 0xFFFFFFFF are plain registers (DMACR reads 0: no RX DMA)', (t) => {
  const { mcu } = uartChip(t);
  assert.strictEqual(mcu.readUint32(DMACR), 0);
  assert.strictEqual(mcu.readUint32(RSR), 0);
  assert.strictEqual(mcu.readUint32(IFLS), 0x12);
  mcu.writeUint32(IFLS, 0x20);
  assert.strictEqual(mcu.readUint32(IFLS), 0x20);
});

test('TX: a 32-entry FIFO drained at line speed, TXFF while full, BUSY while sending', (t) => {
  const chip = uartChip(t);
  const { mcu, tx } = chip;
  for (let i = 0; i < 40; i++) mcu.writeUint32(DR, 0x41 + (i % 26));
  // One byte went into the shift register at once, 32 wait in the FIFO, the rest were refused.
  assert.ok(mcu.readUint32(FR) & FR_TXFF);
  assert.ok(mcu.readUint32(FR) & FR_BUSY);
  assert.strictEqual(tx.length, 0, 'nothing on the line before one byte time');
  mcu.clock.tick(BYTE_NS * 1.01);
  assert.strictEqual(tx.length, 1);
  assert.ok(!(mcu.readUint32(FR) & FR_TXFF), 'room again once the shift register took the next byte');
  mcu.clock.tick(BYTE_NS * 40);
  assert.strictEqual(tx.length, 33, 'bytes written while the FIFO was full were not accepted');
  assert.ok(mcu.readUint32(FR) & FR_TXFE);
  assert.ok(!(mcu.readUint32(FR) & FR_BUSY));
});

test('TX interrupt: raised when the FIFO drains through its level, not again while it stays low', (t) => {
  const { mcu } = uartChip(t);
  mcu.writeUint32(IFLS, 0); // TX level 1/8 = 4 entries
  mcu.writeUint32(IMSC, INT_TX);
  mcu.writeUint32(DR, 0x31); // one byte: straight to the shift register, the FIFO never passes the level
  assert.strictEqual(mcu.readUint32(RIS) & INT_TX, 0);
  for (let i = 0; i < 20; i++) mcu.writeUint32(DR, 0x30);
  assert.strictEqual(mcu.readUint32(RIS) & INT_TX, 0);
  mcu.clock.tick(BYTE_NS * 15.5); // FIFO 20 -> 5 entries
  assert.strictEqual(mcu.readUint32(RIS) & INT_TX, 0);
  mcu.clock.tick(BYTE_NS * 1.01); // -> 4: through the level
  assert.ok(mcu.readUint32(RIS) & INT_TX);
  mcu.writeUint32(ICR, INT_TX);
  mcu.clock.tick(BYTE_NS * 10); // drains to empty: no new edge
  assert.strictEqual(mcu.readUint32(RIS) & INT_TX, 0);
});

test('RX: host bytes arrive at line speed, only while the 32-byte FIFO has room, none dropped', (t) => {
  const chip = uartChip(t);
  const { mcu, lines } = chip;
  lines[0].send(Uint8Array.from({ length: 100 }, (_, i) => i));
  assert.ok(mcu.readUint32(FR) & FR_RXFE, 'nothing before the first byte time');
  mcu.clock.tick(BYTE_NS * 3.5);
  assert.strictEqual(chip.uart[0].rxFifo.length, 3);
  mcu.clock.tick(BYTE_NS * 100);
  assert.ok(mcu.readUint32(FR) & FR_RXFF);
  assert.strictEqual(lines[0].pendingCount, 68, 'the rest waits for room');
  const got = [];
  for (let round = 0; round < 200 && got.length < 100; round++) {
    while (!(mcu.readUint32(FR) & FR_RXFE)) got.push(mcu.readUint32(DR));
    mcu.clock.tick(BYTE_NS);
  }
  assert.deepStrictEqual(got, Array.from({ length: 100 }, (_, i) => i));
});

test('RX interrupts: level (RXRIS) and receive timeout (RTRIS) after 32 bit times of silence', (t) => {
  const { mcu, lines } = uartChip(t);
  mcu.writeUint32(IFLS, 4 << 3); // RX level 7/8 = 28, as embassy-rp sets it
  mcu.writeUint32(IMSC, INT_RX | INT_RT);
  lines[0].send(Uint8Array.of(1, 2, 3));
  mcu.clock.tick(BYTE_NS * 3.01);
  assert.strictEqual(mcu.readUint32(RIS) & (INT_RX | INT_RT), 0, 'below the level, no timeout yet');
  mcu.clock.tick((32 * 1e9) / 115200);
  assert.strictEqual(mcu.readUint32(RIS) & (INT_RX | INT_RT), INT_RT);
  for (let i = 0; i < 3; i++) mcu.readUint32(DR);
  assert.strictEqual(mcu.readUint32(RIS) & INT_RT, 0, 'cleared when the FIFO is emptied');
  lines[0].send(new Uint8Array(28));
  mcu.clock.tick(BYTE_NS * 28.01);
  assert.ok(mcu.readUint32(RIS) & INT_RX);
});

test('baud 0 is an unlimited line: bytes move at once', (t) => {
  const chip = uartChip(t, { baud: 0 });
  for (let i = 0; i < 100; i++) chip.mcu.writeUint32(DR, i);
  assert.strictEqual(chip.tx.length, 100);
  chip.lines[0].send(new Uint8Array(40));
  assert.strictEqual(chip.uart[0].rxFifo.length, 32);
});

test('nothing moves while the UART is disabled, and input waits for it', (t) => {
  const chip = chipIn(t);
  chip.lines[0].send(Uint8Array.of(7));
  chip.mcu.writeUint32(DR, 0x55);
  chip.mcu.clock.tick(BYTE_NS * 5);
  assert.strictEqual(chip.tx.length, 0);
  assert.strictEqual(chip.lines[0].pendingCount, 1);
  chip.mcu.writeUint32(CR, (1 << 9) | (1 << 8) | 1);
  chip.mcu.clock.tick(BYTE_NS * 1.5);
  assert.deepStrictEqual(chip.tx, [0x55]);
  assert.strictEqual(chip.mcu.readUint32(DR), 7);
});
