"""Pure numpy/torch geometry: frames, heat-map decoding, line fits, Schoettle point, mm metrics."""
