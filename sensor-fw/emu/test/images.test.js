'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const { execFileSync, spawnSync } = require('child_process');
const { compose, parseImageArg, ImageError } = require('../lib/images');
const { tempDir } = require('../testing/fixtures');

/** A minimal ARM ELF with the given PT_LOAD segments ({paddr, bytes}) and one PT_LOAD in RAM. */
function elf(segments) {
  const all = [...segments, { paddr: 0x20000000, bytes: Buffer.from('ram-only') }];
  const phoff = 52;
  let dataOff = phoff + 32 * all.length;
  const header = Buffer.alloc(dataOff);
  header.writeUInt32BE(0x7f454c46, 0);
  header[4] = 1; // 32-bit
  header[5] = 1; // little-endian
  header[6] = 1;
  header.writeUInt16LE(2, 16); // ET_EXEC
  header.writeUInt16LE(40, 18); // EM_ARM
  header.writeUInt32LE(phoff, 28);
  header.writeUInt16LE(32, 42);
  header.writeUInt16LE(all.length, 44);
  const bodies = [];
  all.forEach((s, i) => {
    const p = phoff + 32 * i;
    header.writeUInt32LE(1, p);
    header.writeUInt32LE(dataOff, p + 4);
    header.writeUInt32LE(s.paddr, p + 8);
    header.writeUInt32LE(s.paddr, p + 12);
    header.writeUInt32LE(s.bytes.length, p + 16);
    header.writeUInt32LE(s.bytes.length, p + 20);
    bodies.push(s.bytes);
    dataOff += s.bytes.length;
  });
  return Buffer.concat([header, ...bodies]);
}

function uf2Block(addr, bytes, flags = 0x2000) {
  const b = Buffer.alloc(512);
  b.writeUInt32LE(0x0a324655, 0);
  b.writeUInt32LE(0x9e5d5157, 4);
  b.writeUInt32LE(flags, 8);
  b.writeUInt32LE(addr, 12);
  b.writeUInt32LE(bytes.length, 16);
  bytes.copy(b, 32);
  b.writeUInt32LE(0x0ab16f30, 508);
  return b;
}

test('ELF load segments in flash land at their load addresses; RAM segments are skipped', () => {
  const image = elf([
    { paddr: 0x10000000, bytes: Buffer.from('boot2') },
    { paddr: 0x10000100, bytes: Buffer.from('vectors+text') },
  ]);
  const { flash, placed } = compose(64 * 1024, [{ path: 'fw.elf', address: null, bytes: image }]);
  assert.strictEqual(Buffer.from(flash.subarray(0, 5)).toString(), 'boot2');
  assert.strictEqual(Buffer.from(flash.subarray(0x100, 0x10c)).toString(), 'vectors+text');
  assert.strictEqual(flash[5], 0xff, 'gaps stay erased');
  assert.strictEqual(placed.length, 2);
});

test('later images overwrite earlier ones; raw binaries need their XIP address', () => {
  const boot = elf([{ paddr: 0x10000000, bytes: Buffer.alloc(0x200, 0x11) }]);
  const app = Buffer.alloc(0x10, 0x22);
  const uf2 = uf2Block(0x10000180, Buffer.from('uf2!'));
  const { flash } = compose(64 * 1024, [
    { path: 'boot.elf', address: null, bytes: boot },
    { path: 'app.bin', address: 0x10000100, bytes: app },
    { path: 'x.uf2', address: null, bytes: uf2 },
  ]);
  assert.strictEqual(flash[0xff], 0x11);
  assert.strictEqual(flash[0x100], 0x22);
  assert.strictEqual(Buffer.from(flash.subarray(0x180, 0x184)).toString(), 'uf2!');
  assert.throws(() => compose(4096, [{ path: 'app.bin', address: null, bytes: app }]), /needs its XIP address/);
  assert.throws(() => compose(4096, [{ path: 'app.bin', address: 0x10001000, bytes: app }]), ImageError);
  assert.throws(() => compose(4096, [{ path: 'fw.elf', address: 0x10000000, bytes: boot }]), /only raw binaries take @ADDRESS/);
  assert.deepStrictEqual(parseImageArg('dir@x/app.bin@0x10007000'), { path: 'dir@x/app.bin', address: 0x10007000 });
});

test('the compose command writes the flash file', (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'app.bin'), Buffer.from('APP'));
  const out = path.join(dir, 'flash.bin');
  const run = path.join(__dirname, '..', 'run.js');
  execFileSync(process.execPath, [run, 'compose', '--out', out, '--size', '256K', `${path.join(dir, 'app.bin')}@0x10007000`], { stdio: 'pipe' });
  const flash = fs.readFileSync(out);
  assert.strictEqual(flash.length, 256 * 1024);
  assert.strictEqual(flash.subarray(0x7000, 0x7003).toString(), 'APP');
  const bad = spawnSync(process.execPath, [run, 'compose', '--out', out, path.join(dir, 'app.bin')], { encoding: 'utf8' });
  assert.strictEqual(bad.status, 1);
  assert.match(bad.stderr, /^emu: .*needs its XIP address/);
});

test('damaged images are refused with their name, never half-composed', () => {
  const good = elf([{ paddr: 0x10000100, bytes: Buffer.alloc(64, 1) }]);
  const truncated = good.subarray(0, 60);
  assert.throws(() => compose(4096, [{ path: 'cut.elf', address: null, bytes: truncated }]), (e) => e instanceof ImageError && /cut\.elf/.test(e.message));
  const beyond = Buffer.from(good);
  beyond.writeUInt32LE(0x7fffffff, 52 + 4); // first segment's file offset past the end
  assert.throws(() => compose(4096, [{ path: 'bad.elf', address: null, bytes: beyond }]), /beyond the end of the file/);
  const block = uf2Block(0x10000000, Buffer.from('x'));
  block.writeUInt32LE(0, 508);
  assert.throws(() => compose(4096, [{ path: 'bad.uf2', address: null, bytes: block }]), /bad UF2 magic/);
  const bigBlock = uf2Block(0x10000000, Buffer.from('x'));
  bigBlock.writeUInt32LE(4000, 16);
  assert.throws(() => compose(4096, [{ path: 'big.uf2', address: null, bytes: bigBlock }]), /claims 4000 bytes/);
  const x86 = Buffer.from(good);
  x86.writeUInt16LE(62, 18);
  assert.throws(() => compose(4096, [{ path: 'x86.elf', address: null, bytes: x86 }]), /not an ARM ELF/);
});
