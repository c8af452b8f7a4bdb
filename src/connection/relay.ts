import type { Socket } from 'node:net';

/**
 * Splices one direction of a relayed connection: every chunk read from `from` is written to
 * `to`; when `to` cannot take more, `from` is paused until it drains, so a slow reader holds
 * the fast writer back and memory stays flat. `from`'s FIN is forwarded as `to`'s FIN (a
 * half-close), and the other direction keeps flowing until it ends too.
 */
export function splice(from: Socket, to: Socket, onChunk: () => void): void {
  from.on('data', (chunk: Buffer) => {
    onChunk();
    if (!to.write(chunk)) from.pause();
  });
  to.on('drain', () => from.resume());
  from.on('end', () => to.end());
}

/**
 * Tears down the peer of a socket that failed: a reset is passed on as a reset, anything
 * else as a plain close.
 */
export function abortPeer(peer: Socket, err: NodeJS.ErrnoException): void {
  if (peer.destroyed) return;
  if (err.code === 'ECONNRESET' && typeof peer.resetAndDestroy === 'function') peer.resetAndDestroy();
  else peer.destroy();
}
