"""TrainingService over gRPC: thin proto ↔ :class:`JobManager` glue.

Requests were validated by protovalidate before they get here (shared interceptor);
domain errors raised by the manager are mapped to statuses by the shared interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from agentforge.training.v1 import request_response_pb2 as rr_pb
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from agentforge.training.v1 import training_service_pb2, training_service_pb2_grpc
from google.protobuf import empty_pb2

from services.training.jobs import JobManager

__all__ = ["SERVICE_NAME", "TrainingServicer"]

SERVICE_NAME = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs

    def register(self, server: grpc.aio.Server) -> list[str]:
        training_service_pb2_grpc.add_TrainingServiceServicer_to_server(self, server)
        return [SERVICE_NAME]

    async def CreateTrainingJob(self, request: rr_pb.CreateTrainingJobRequest, context: Any) -> job_pb.TrainingJob:
        return await self.jobs.create(request.training_job, request.training_job_id, request.request_id)

    async def GetTrainingJob(self, request: rr_pb.GetTrainingJobRequest, context: Any) -> job_pb.TrainingJob:
        return await self.jobs.get(request.name)

    async def ListTrainingJobs(self, request: rr_pb.ListTrainingJobsRequest, context: Any) -> rr_pb.ListTrainingJobsResponse:
        jobs, token = await self.jobs.list(page_size=request.page_size, page_token=request.page_token,
                                           states=list(request.states), phase=request.phase,
                                           label_selector=request.label_selector)
        return rr_pb.ListTrainingJobsResponse(training_jobs=jobs, next_page_token=token)

    async def CancelTrainingJob(self, request: rr_pb.CancelTrainingJobRequest, context: Any) -> job_pb.TrainingJob:
        return await self.jobs.cancel(request.name)

    async def PauseTrainingJob(self, request: rr_pb.PauseTrainingJobRequest, context: Any) -> job_pb.TrainingJob:
        return await self.jobs.pause(request.name)

    async def ResumeTrainingJob(self, request: rr_pb.ResumeTrainingJobRequest, context: Any) -> job_pb.TrainingJob:
        return await self.jobs.resume(request.name)

    async def DeleteTrainingJob(self, request: rr_pb.DeleteTrainingJobRequest, context: Any) -> empty_pb2.Empty:
        await self.jobs.delete(request.name)
        return empty_pb2.Empty()

    async def AdjustTrainingJob(self, request: rr_pb.AdjustTrainingJobRequest, context: Any) -> job_pb.TrainingJob:
        return await self.jobs.adjust(
            request.name,
            learning_rate=request.learning_rate if request.HasField("learning_rate") else None,
            alpha=request.grokfast_alpha if request.HasField("grokfast_alpha") else None,
            lamb=request.grokfast_lamb if request.HasField("grokfast_lamb") else None,
        )

    async def CheckpointTrainingJob(self, request: rr_pb.CheckpointTrainingJobRequest, context: Any) -> job_pb.TrainingJob:
        return await self.jobs.checkpoint(request.name)

    async def WatchTrainingJob(self, request: rr_pb.WatchTrainingJobRequest, context: Any) -> AsyncIterator[ev_pb.TrainingJobEvent]:
        async for event in self.jobs.watch(request.name, request.cursor):
            yield event

    async def GetTrainingJobMetrics(self, request: rr_pb.GetTrainingJobMetricsRequest, context: Any) -> job_pb.TrainingJobMetrics:
        return await self.jobs.metrics(request.name, request.max_points)

    async def ListCheckpoints(self, request: rr_pb.ListCheckpointsRequest, context: Any) -> rr_pb.ListCheckpointsResponse:
        checkpoints, token = await self.jobs.list_checkpoints(request.parent, page_size=request.page_size,
                                                              page_token=request.page_token)
        return rr_pb.ListCheckpointsResponse(checkpoints=checkpoints, next_page_token=token)
