import type { SupabaseClient } from "@supabase/supabase-js";
import { useEffect, useState } from "react";

/** A row of `position-updates`: the plugin's typed payload (computed fields included). */
export interface Position {
  id: number;
  user_id: string;
  symbol: string;
  current_price: number | null;
  [field: string]: unknown;
}

/** What the bridge adds to a plugin channel's broadcast: the event's seq and its operation. */
interface ChangeMeta {
  id?: string;
  operation?: "INSERT" | "UPDATE" | "DELETE" | "BROADCAST";
}

/**
 * The signed-in user's positions, live, keyed by id.
 *
 * One binding: the plugin channel's broadcasts carry every INSERT, UPDATE and
 * DELETE, and a DELETE carries the deleted row's payload, so `meta.operation`
 * decides. (Adding a `postgres_changes` DELETE binding as well would remove the
 * row, and then this broadcast of the same DELETE would put it back.)
 */
export function usePositions(supabase: SupabaseClient): Record<number, Position> {
  const [positions, setPositions] = useState<Record<number, Position>>({});
  useEffect(() => {
    const channel = supabase
      .channel("position-updates")
      .on(
        "broadcast",
        { event: "position_update" },
        ({ payload, meta }: { payload: Position; meta?: ChangeMeta }) =>
          setPositions(({ [payload.id]: _previous, ...others }) =>
            meta?.operation === "DELETE" ? others : { ...others, [payload.id]: payload },
          ),
      )
      .subscribe();
    return () => {
      void supabase.removeChannel(channel);
    };
  }, [supabase]);
  return positions;
}
