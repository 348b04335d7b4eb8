"""The run, written once: the program (`program.Run`, its phases as generators over a
`World`), its configuration's one home (`config`), and the client's rules (`invoke`).

Nothing here touches a process, a socket or the wall clock; `orchestrator.real` and
`orchestrator.sim` are the two worlds it runs in.
"""
