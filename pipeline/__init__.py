"""Edge-deployment pipeline for TVM-compiled CNNs: profile -> build -> push -> run -> result."""
