from time import sleep
from mpserver import ProcessWorker, ProcessServlet, SequentialServlet, EnsembleServlet


class GetHead(ProcessWorker):
    def call(self, x):
        sleep(0.01)
        return x[0]


class GetTail(ProcessWorker):
    def call(self, x):
        sleep(0.011)
        return x[-1]


class GetLen(ProcessWorker):
    def call(self, x):
        sleep(0.012)
        return len(x)


class Solute(ProcessWorker):
    def call(self, x):
        return f"Hello, {x}!"


from mpserver import ThreadServlet, make_threadworker

servlet = SequentialServlet(
    EnsembleServlet(
        ProcessServlet(GetHead, cpus=[0]),
        ProcessServlet(GetTail, cpus=[0, 1]),
        ProcessServlet(GetLen, cpus=[1]),
        ),
    ThreadServlet(make_threadworker(lambda x: (x[0] + x[1]) * x[2])),
    ProcessServlet(Solute),
    )


from mpserver import Server

server = Server(servlet, sys_info_log_cadence=None)


def main():

    with server:
        x = 'world'
        y = server.call(x)
        print(y)

        x = [1, 2, 3, 4]
        y = server.call(x)
        print(y)


if __name__ == '__main__':
    main()
