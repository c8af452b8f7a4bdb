import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** A new opaque token: 32 random bytes, base64url, with a prefix that says what it is (47 characters). */
export function newToken(prefix: 'sy_op' | 'sy_tn'): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

/** How tokens are stored and looked up: SHA-256, hex. Tokens carry 256 random bits, so no salt or stretching is needed. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Compares two token hashes in constant time. */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}
