import { Migration20261121000000_foundation } from "./Migration20261121000000_foundation";

/** Every migration, in order. Listed explicitly so compiled and test runs load the same set without globbing. */
export const migrationsList = [{ name: "Migration20261121000000_foundation", class: Migration20261121000000_foundation }];
