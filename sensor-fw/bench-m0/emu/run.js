#!/usr/bin/env node
// Runs the bench ELF on rp2040js's Cortex-M0+ core, from SRAM, and prints the cycles between
// its breakpoints (see ../README.md).
//
//   node run.js ../target/thumbv6m-none-eabi/release/outpost-bench-m0
//
// The ELF's loadable segments are copied into SRAM (0x20000000; the program is linked there,
// ram.x), .bss zeroed, SP set to 0x20042000 and PC to the entry point. No bootrom, no boot2, no
// flash: the core executes from zero-wait-state SRAM, so a count is the instructions' own cycles
// as rp2040js times them (one per instruction, plus one per memory access and the extra cycles of
// taken branches, BL, POP {pc}, LDM/STM per register: the Cortex-M0+ TRM's timings).
'use strict';
const fs = require('fs');
const { RP2040 } = require('rp2040js');

const RAM = 0x20000000;
const MAX_CYCLES = 2e9;

function load(mcu, path) {
  const buf = fs.readFileSync(path);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dv.getUint32(0, false) !== 0x7f454c46) throw new Error(`${path}: not an ELF file`);
  const entry = dv.getUint32(24, true);
  const phoff = dv.getUint32(28, true);
  const phentsize = dv.getUint16(42, true);
  const phnum = dv.getUint16(44, true);
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (dv.getUint32(p, true) !== 1) continue; // PT_LOAD
    const off = dv.getUint32(p + 4, true);
    const vaddr = dv.getUint32(p + 8, true);
    const filesz = dv.getUint32(p + 16, true);
    const memsz = dv.getUint32(p + 20, true);
    if (vaddr < RAM || vaddr + memsz > RAM + mcu.sram.length) {
      throw new Error(`segment at 0x${vaddr.toString(16)} is not in SRAM`);
    }
    mcu.sram.set(buf.subarray(off, off + filesz), vaddr - RAM);
    mcu.sram.fill(0, vaddr - RAM + filesz, vaddr - RAM + memsz);
  }
  return entry;
}

const image = process.argv[2];
if (!image) {
  console.error('usage: node run.js ELF');
  process.exit(2);
}
const mcu = new RP2040();
const entry = load(mcu, image);
const core = mcu.core;
core.SP = 0x20042000;
core.LR = 0xfffffffe;
core.PC = entry & ~1;

const marks = [];
let stop = null;
mcu.onBreak = (code) => {
  marks.push({ code, cycles: core.cycles, r0: core.registers[0] >>> 0 });
  if (code === 99 || code === 98) stop = code;
};
const started = Date.now();
while (stop === null && core.cycles < MAX_CYCLES) {
  core.executeInstruction();
}
const wall = (Date.now() - started) / 1000;
if (stop !== 99) {
  console.error(stop === 98 ? 'the program failed (mark 98)' : `no end after ${core.cycles} cycles`);
  process.exit(1);
}

const at = (code) => {
  const m = marks.find((m) => m.code === code);
  if (!m) throw new Error(`mark ${code} missing`);
  return m;
};
// Cycles between two marks, less the cost of the mark instruction itself (one cycle for BKPT,
// and the MOV/ADR into r0, measured by marks with nothing between them is below 5 cycles).
const span = (a, b) => at(b).cycles - at(a).cycles;
const MHZ = 125;
const rows = [
  ['boot: SigningKey::from_bytes (Ed25519 public key from the secret)', 1, 2],
  ['HELLO: Ephemeral::from_random (X25519 fixed-base)', 3, 4],
  ['CHALLENGE -> PROOF: node_answer', 5, 6],
  ['  X25519 public key (PublicKey::from)', 10, 11],
  ['  X25519 agreement (diffie_hellman)', 11, 12],
  ['  Ed25519 verify_strict (51-byte message)', 13, 14],
  ['  Ed25519 sign (51-byte message)', 14, 15],
  ['TELEMETRY (4 channels) framed and sealed: encode_sealed_frame', 20, 21],
  ['TELEMETRY (4 channels) framed, no seal: emit + encode_raw_frame', 22, 23],
  ['ACK received: FrameDecoder::push per byte + open', 24, 25],
];
console.log(`${'what'.padEnd(72)} ${'cycles'.padStart(11)} ${'ms @125MHz'.padStart(11)}`);
for (const [what, a, b] of rows) {
  const c = span(a, b);
  console.log(`${what.padEnd(72)} ${String(c).padStart(11)} ${(c / (MHZ * 1e3)).toFixed(2).padStart(11)}`);
}
const handshake = span(3, 4) + span(5, 6);
console.log(
  `${'node per handshake: from_random + node_answer'.padEnd(72)} ${String(handshake).padStart(11)} ${(handshake / (MHZ * 1e3)).toFixed(2).padStart(11)}`
);
const sig = at(99).r0 - RAM;
console.log(`PROOF signature: ${Buffer.from(mcu.sram.subarray(sig, sig + 64)).toString('hex')}`);
console.log(`emulated ${core.cycles} cycles in ${wall.toFixed(1)} s wall`);
