"""Board side: profiles, the embedded sshd, the verified SSH connection, remote commands, file sync, board facts and the runtime bundle."""
