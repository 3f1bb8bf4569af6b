import type { SagaKind } from "../engine";
import type { KindEnv } from "./common";
import { provision } from "./provision";
import { powerOff, powerOn } from "./power";
import { decommission } from "./decommission";
import { resize } from "./resize";

/** Every saga kind the provisioning service drives. A new kind is a new file here and one line below: the engine is not edited. */
export const KINDS: SagaKind<KindEnv>[] = [provision, powerOff, powerOn, decommission, resize];

export { provision, powerOff, powerOn, decommission, resize };
export type { KindEnv };
