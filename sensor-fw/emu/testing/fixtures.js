'use strict';
// Shared fixtures: temporary flash files and a chip assembled the way the emulator does it.
const fs = require('fs');
const os = require('os');
const path = require('path');
const { FlashFile } = require('../lib/flash-file');
const { SerialFlash } = require('../lib/ssi-flash');
const { SerialLine } = require('../lib/uart');
const { Sht3xSensor } = require('../lib/sht3x');
const { RomShim } = require('../lib/rom-shim');
const { createChip } = require('../lib/chip');
const { resetStateAfter } = require('../lib/emulator');

function tempDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-emu-test-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A flash file of `size` bytes, erased, or holding `bytes` at 0. */
function flashFileIn(t, { size = 64 * 1024, bytes = null, ...options } = {}) {
  const file = path.join(tempDir(t), 'flash.bin');
  const content = new Uint8Array(size).fill(0xff);
  if (bytes) content.set(bytes, 0);
  fs.writeFileSync(file, content);
  const flash = new FlashFile(file, options);
  t.after(() => flash.close());
  return { file, flash };
}

/** A chip with the emulator's models; `resets` collects requested resets. */
function chipIn(t, { baud = 115200, kind = 'power-on', scratch = new Uint32Array(8), sensor = new Sht3xSensor(), present = true, chipCelsius = 27 } = {}) {
  const { flash: flashFile } = flashFileIn(t);
  const tx = [];
  const lines = [new SerialLine({ baud, sink: (b) => tx.push(b) }), new SerialLine({ baud, sink: () => {} })];
  const resets = [];
  const notes = [];
  const flash = new SerialFlash(flashFile, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
  const chip = createChip({
    flash,
    rom: new RomShim(flashFile),
    lines,
    sensor,
    options: { present, chipCelsius, verbose: false },
    resetState: resetStateAfter(kind, scratch),
    requestReset: (k) => resets.push(k),
    note: (n) => notes.push(n),
  });
  return { ...chip, flashFile, flash, lines, tx, resets, notes, sensor };
}

module.exports = { tempDir, flashFileIn, chipIn };
