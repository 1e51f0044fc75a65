'use strict';
// Firmware images into a flash file: ELF (the PT_LOAD segments whose load address is in flash),
// UF2 (each block at its target address) and raw binaries at an explicit XIP address.

const fs = require('fs');
const { XIP_BASE } = require('./flash-file');

const UF2_MAGIC_START0 = 0x0a324655;
const UF2_MAGIC_START1 = 0x9e5d5157;
const UF2_MAGIC_END = 0x0ab16f30;
const UF2_FLAG_NOT_MAIN_FLASH = 0x1;

class ImageError extends Error {}

/** "app.bin@0x10007000" -> { path: "app.bin", address: 0x10007000 }; no "@" -> address null. */
function parseImageArg(arg) {
  const at = arg.lastIndexOf('@');
  if (at < 0) return { path: arg, address: null };
  const text = arg.slice(at + 1);
  if (!/^(0x[0-9a-fA-F]+|\d+)$/.test(text)) throw new ImageError(`${arg}: bad address '${text}'`);
  return { path: arg.slice(0, at), address: Number(text) };
}

function kindOf(buf) {
  if (buf.length >= 4 && buf.readUInt32BE(0) === 0x7f454c46) return 'elf';
  if (buf.length >= 512 && buf.readUInt32LE(0) === UF2_MAGIC_START0 && buf.readUInt32LE(4) === UF2_MAGIC_START1) return 'uf2';
  return 'bin';
}

/** The (flash offset, bytes) pieces an image puts into flash. */
function pieces(buf, name, address) {
  const kind = kindOf(buf);
  if (address !== null && kind !== 'bin') throw new ImageError(`${name}: only raw binaries take @ADDRESS (this is ${kind.toUpperCase()})`);
  if (kind === 'elf') return elfPieces(buf, name);
  if (kind === 'uf2') return uf2Pieces(buf, name);
  if (address === null) throw new ImageError(`${name}: a raw binary needs its XIP address, e.g. ${name}@0x10000000`);
  return [{ offset: address - XIP_BASE, bytes: buf }];
}

function elfPieces(buf, name) {
  if (buf[4] !== 1 || buf[5] !== 1) throw new ImageError(`${name}: not a 32-bit little-endian ELF`);
  if (buf.readUInt16LE(18) !== 40) throw new ImageError(`${name}: not an ARM ELF`);
  const phoff = buf.readUInt32LE(28);
  const phentsize = buf.readUInt16LE(42);
  const phnum = buf.readUInt16LE(44);
  const out = [];
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (p + 32 > buf.length) throw new ImageError(`${name}: truncated program headers`);
    const type = buf.readUInt32LE(p);
    const fileOffset = buf.readUInt32LE(p + 4);
    const paddr = buf.readUInt32LE(p + 12);
    const filesz = buf.readUInt32LE(p + 16);
    if (type !== 1 || filesz === 0) continue; // PT_LOAD with bytes in the file
    // Load address (LMA): .data's initial values live in flash even though it runs in RAM.
    if (paddr < XIP_BASE || paddr >= XIP_BASE + 0x1000000) continue; // a RAM-only segment
    if (fileOffset + filesz > buf.length) throw new ImageError(`${name}: segment ${i} beyond the end of the file`);
    out.push({ offset: paddr - XIP_BASE, bytes: buf.subarray(fileOffset, fileOffset + filesz) });
  }
  if (!out.length) throw new ImageError(`${name}: no loadable segment in flash`);
  return out;
}

function uf2Pieces(buf, name) {
  if (buf.length % 512) throw new ImageError(`${name}: UF2 length is not a multiple of 512`);
  const out = [];
  for (let off = 0; off < buf.length; off += 512) {
    const b = buf.subarray(off, off + 512);
    if (b.readUInt32LE(0) !== UF2_MAGIC_START0 || b.readUInt32LE(4) !== UF2_MAGIC_START1 || b.readUInt32LE(508) !== UF2_MAGIC_END) {
      throw new ImageError(`${name}: block ${off / 512} has bad UF2 magic`);
    }
    if (b.readUInt32LE(8) & UF2_FLAG_NOT_MAIN_FLASH) continue;
    const addr = b.readUInt32LE(12);
    const size = b.readUInt32LE(16);
    if (size > 476) throw new ImageError(`${name}: block ${off / 512} claims ${size} bytes`);
    out.push({ offset: addr - XIP_BASE, bytes: b.subarray(32, 32 + size) });
  }
  return out;
}

/**
 * Lays images over a flash of `size` bytes (0xFF = erased); later images overwrite earlier ones.
 * @param {number} size
 * @param {{path: string, address: number|null, bytes?: Buffer}[]} images
 */
function compose(size, images) {
  const flash = new Uint8Array(size).fill(0xff);
  const placed = [];
  for (const img of images) {
    const buf = img.bytes ?? fs.readFileSync(img.path);
    for (const { offset, bytes } of pieces(buf, img.path, img.address)) {
      if (offset < 0 || offset + bytes.length > size) {
        throw new ImageError(`${img.path}: 0x${(XIP_BASE + offset).toString(16)} +0x${bytes.length.toString(16)} is outside the ${size}-byte flash at 0x10000000`);
      }
      flash.set(bytes, offset);
      placed.push({ path: img.path, address: XIP_BASE + offset, length: bytes.length });
    }
  }
  return { flash, placed };
}

module.exports = { compose, parseImageArg, pieces, kindOf, ImageError };
