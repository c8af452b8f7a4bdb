import { CloseReason, RouterError } from '../errors.js';
import type { Decision } from '../routing/decision.js';
import type { Router, RouterHooks } from '../sandbox/router.js';

const none: RouterHooks = { accept: false, connectError: false, inactivityError: false };

/** A tenant's router before its first upload: every connection is closed with that reason. */
export class MissingRouter implements Router {
  readonly hooks = none;

  warm(): Promise<RouterHooks> {
    return Promise.resolve(none);
  }

  route(): Promise<Decision> {
    return Promise.reject(new RouterError(CloseReason.routerUnavailable, 'no router uploaded yet'));
  }

  accept(): Promise<Decision | undefined> {
    return Promise.resolve(undefined);
  }

  connectError(): Promise<void> {
    return Promise.resolve();
  }

  inactivityError(): Promise<void> {
    return Promise.resolve();
  }

  dispose(): void {}
}
