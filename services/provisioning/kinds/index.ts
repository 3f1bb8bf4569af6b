import type { SagaKind } from "../engine";
import type { KindEnv } from "./common";
import { provision } from "./provision";
import { powerOff, powerOn } from "./power";
import { decommission } from "./decommission";

/**
 * Every saga kind the provisioning service drives. A new kind is a new file here and one line below: the engine
 * is not edited. (`resize` — power off, resize, power on, undone by resizing back — is next: SPEC §3.)
 */
export const KINDS: SagaKind<KindEnv>[] = [provision, powerOff, powerOn, decommission];

export { provision, powerOff, powerOn, decommission };
export type { KindEnv };
